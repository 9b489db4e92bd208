"""LayerFusion Re-harmonize run as the executor runs it, with its widgets at their defaults
unless given (no layer moved by the widgets)."""

from __future__ import annotations

from typing import Any

import torch

from support.pack_loading import run_node
from support.tiny_stand_ins import tiny_vae

STILL = {
    f"fg{k}_{f}": v
    for k in (0, 1)
    for f, v in (("dx", 0), ("dy", 0), ("scale", 1.0), ("flip_h", False), ("flip_v", False))
}
"""The move widgets of fg0 and fg1 at rest."""


def run_reharmonize(pack, model, bundle, vae: Any = None, **inputs: Any) -> tuple:
    """Re-harmonize's outputs (bundle, blended, effects, fg_layers, layers) for ``bundle`` on
    ``model``, in inference mode; ``vae``: the tiny stand-in VAE unless given."""
    values = {
        "preset": "default", "p_start": 0.4, "p_end": 0.6, "lock_foreground": True, "seed": 3,
        "effects_threshold": 0.02, "document_image": 0, **STILL, **inputs,
    }  # fmt: skip
    with torch.inference_mode():
        return run_node(
            pack.node("LayerFusionReharmonize"), model=model, vae=vae or tiny_vae(), bundle=bundle, **values
        ).result
