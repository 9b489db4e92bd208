"""Layers as data: the layer bundle, the layer prompts of a chain, placements and moves,
compositing, the PSD and ComfyUI core's LAYERS document. Pure torch (and Pillow); imports
only ``files``, ``formats`` and ``options`` below it."""
