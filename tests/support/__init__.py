"""Test helpers shared by the test folders (``tests`` is on sys.path, so ``from support...``)."""
