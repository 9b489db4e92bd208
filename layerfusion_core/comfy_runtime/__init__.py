"""The host adapter: the only part of the core that imports ComfyUI (lazily, inside
functions), never imported by ``layerfusion_core/__init__.py`` or by core tests."""

from .patching import PHASE_KEY, WRAPPER_KEY, LayerFusionPatch, patch_model
from .sampling import TripletResult, model_unet_layout, sample_triplet

__all__ = [
    "PHASE_KEY",
    "WRAPPER_KEY",
    "LayerFusionPatch",
    "TripletResult",
    "model_unet_layout",
    "patch_model",
    "sample_triplet",
]
