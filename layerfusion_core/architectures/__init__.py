"""One table per model family (SDXL today): its transformer blocks, widths and heads, and
which families a run accepts. Pure Python and torch; imports nothing above ``options``."""
