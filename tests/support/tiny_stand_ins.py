"""Test-only ComfyUI nodes and objects that let the shipped workflows run without SDXL weights:
the tiny random SDXL model, a CLIP that needs no text-encoder weights, a small real VAE, tiny
FG weights, a random transparent decoder with the real shapes, and synthetic layers.

Used in-process (``register(nodes)``) and inside a test server (a generated custom-node folder
imports this module and exports NODE_CLASS_MAPPINGS). Nothing here imports ComfyUI at module
level; everything that needs it runs after ComfyUI is imported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .synthetic_bundle import SyntheticBundle
from .tiny_sdxl import TINY_SDXL_CONTEXT_DIM, TINY_SDXL_POOLED_DIM, build_tiny_sdxl, init_weights_

CATEGORY = "LayerFusion/tests"
_cache: dict[str, Any] = {}


def tiny_model() -> Any:
    """One tiny random SDXL ModelPatcher per process (seed 0)."""
    if "model" not in _cache:
        _cache["model"] = build_tiny_sdxl(0)
    return _cache["model"]


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


class TinyCLIP:
    """ComfyUI's real SDXL tokenizer (no weights needed) with a stand-in encoder: one random
    64-wide context vector per token position and a random 32-wide pooled vector, seeded by
    the tokens, in the tiny model's sizes ([1, 77 * windows, 64], pooled [1, 32])."""

    def __init__(self) -> None:
        import comfy.sdxl_clip

        self.tokenizer = comfy.sdxl_clip.SDXLTokenizer()

    def tokenize(self, text: str, **kwargs: Any) -> dict:
        return self.tokenizer.tokenize_with_weights(text, **kwargs)

    def encode_from_tokens_scheduled(self, tokens: dict, **kwargs: Any) -> list:
        windows = len(tokens["g"])
        generator = torch.Generator().manual_seed(_seed(repr(tokens["g"])))
        cond = torch.randn(1, 77 * windows, TINY_SDXL_CONTEXT_DIM, generator=generator)
        pooled = torch.randn(1, TINY_SDXL_POOLED_DIM, generator=generator)
        return [[cond, {"pooled_output": pooled}]]

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False, **kwargs: Any) -> Any:
        cond, extra = self.encode_from_tokens_scheduled(tokens)[0]
        return (cond, extra["pooled_output"]) if return_pooled else cond


def tiny_vae() -> Any:
    """A real comfy.sd.VAE (TAESD architecture, random weights): VAEDecode works, 8x upscale."""
    if "vae" not in _cache:
        import comfy.sd
        import comfy.taesd.taesd

        taesd = comfy.taesd.taesd.TAESD()
        init_weights_(taesd, 1)
        _cache["vae"] = comfy.sd.VAE(sd=taesd.state_dict())
    return _cache["vae"]


def random_decoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The transparent decoder's real keys and shapes with random fan-in-scaled weights (fp16,
    as the published file); alpha biased to 0.5 so it stays off the clamp."""
    from layerfusion_core.models.transparent_vae import expected_state_dict_shapes

    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in expected_state_dict_shapes().items():
        if key.endswith("weight") and len(shape) >= 2:
            value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = torch.ones(shape)
        else:
            value = torch.zeros(shape)
        sd[key] = value.half()
    sd["conv_out.bias"] = torch.full_like(sd["conv_out.bias"], 0.5)
    return sd


class TinyCheckpointLoader:
    """Stands in for CheckpointLoaderSimple: same outputs, ignores the file name."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"ckpt_name": ("STRING", {"default": ""})}}

    def load(self, ckpt_name: str) -> tuple:
        return tiny_model(), TinyCLIP(), tiny_vae()


class TinyForegroundLoader:
    """Stands in for LayerFusionForegroundLoader: tiny LoRA-format FG weights that fit the
    tiny model (the real loader checks files against SDXL's table)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LAYERFUSION_FG_WEIGHTS",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "weights_name": ("STRING", {"default": ""}),
                "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0}),
                "application": ("STRING", {"default": "on_the_fly"}),
            }
        }

    def load(self, weights_name: str, strength: float, application: str) -> tuple:
        from .fg_tiny import tiny_fg_weights

        return (tiny_fg_weights(tiny_model(), strength=strength, application=application),)


class SyntheticLayers:
    """Known layers for checking the preview: FG red (yellow in the 2nd, 4th, ... image of a
    batch) with its left half transparent, BG blue, BLENDED green, soft mask a left-to-right
    ramp, hard mask its right half."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "MASK", "MASK")
    RETURN_NAMES = ("fg", "bg", "blended", "soft_mask", "hard_mask")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "width": ("INT", {"default": 64, "min": 8, "max": 1024}),
                "height": ("INT", {"default": 48, "min": 8, "max": 1024}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 8}),
            }
        }

    def make(self, width: int, height: int, batch: int) -> tuple:
        fg = torch.zeros(batch, height, width, 4)
        fg[..., 0] = 1.0
        fg[1::2, ..., 1] = 1.0
        fg[:, :, width // 2 :, 3] = 1.0
        bg = torch.zeros(batch, height, width, 3)
        bg[..., 2] = 1.0
        blended = torch.zeros(batch, height, width, 3)
        blended[..., 1] = 1.0
        soft = torch.linspace(0, 1, width).expand(batch, height, width).clone()
        hard = (soft > 0.5).float()
        return fg, bg, blended, soft, hard


NODE_CLASS_MAPPINGS = {
    "LayerFusionTestTinyCheckpoint": TinyCheckpointLoader,
    "LayerFusionTestTinyForeground": TinyForegroundLoader,
    "LayerFusionTestSyntheticLayers": SyntheticLayers,
    "LayerFusionTestSyntheticBundle": SyntheticBundle,  # a decoded two-layer bundle (synthetic_bundle.py)
}
SUBSTITUTES = {
    "CheckpointLoaderSimple": "LayerFusionTestTinyCheckpoint",
    "LayerFusionForegroundLoader": "LayerFusionTestTinyForeground",
}
"""Class types of a shipped workflow -> their test-only stand-ins (same outputs)."""


@contextmanager
def registered(nodes_module: Any) -> Iterator[None]:
    """Register the test-only nodes in ComfyUI's NODE_CLASS_MAPPINGS for the duration."""
    added = [k for k in NODE_CLASS_MAPPINGS if k not in nodes_module.NODE_CLASS_MAPPINGS]
    nodes_module.NODE_CLASS_MAPPINGS.update({k: NODE_CLASS_MAPPINGS[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            nodes_module.NODE_CLASS_MAPPINGS.pop(key, None)


def substitute(prompt: dict[str, dict[str, Any]]) -> list[str]:
    """Swap the class types of an API-format prompt for their stand-ins, in place; return the
    ids of the swapped nodes."""
    swapped = []
    for node_id, node in prompt.items():
        replacement = SUBSTITUTES.get(node.get("class_type"))
        if replacement:
            node["class_type"] = replacement
            swapped.append(node_id)
    return swapped
