"""Input checks several nodes share (each names the input it refuses)."""

from __future__ import annotations

from typing import Any

from ..layerfusion_core.comfy_runtime.loaders import LoadedDecoder


def check_decoder(decoder: Any) -> None:
    """TypeError naming ``decoder`` unless it is the transparent decoder loader's output."""
    if not isinstance(decoder, LoadedDecoder) and not hasattr(getattr(decoder, "patcher", None), "model"):
        raise TypeError(
            f"decoder: expected the output of LayerFusionTransparentDecoderLoader, got {type(decoder).__name__}"
        )
