"""The units and shapes the pack speaks, one home each: an IMAGE's channels, the latent
cell, a CONDITIONING. Pure Python: every floor may import it."""

from __future__ import annotations

from typing import Any

RGB = 3
"""Colour channels of an IMAGE [B, H, W, C]: ``[..., :RGB]`` is the colour of RGB and RGBA."""

ALPHA = 3
"""Index of an RGBA IMAGE's alpha channel: ``[..., ALPHA]`` ([B, H, W]) or ``[..., ALPHA:]``."""

LATENT_CELL = 8
"""Pixels per side of one SDXL latent cell (the VAE's scale)."""

Conditioning = list[list[Any]]
"""A ComfyUI CONDITIONING: entries ``[tensor [1, T, C], extras dict]``."""
