"""The layer bundle: what a layered run gives (LAYERFUSION_LAYERS), decoded or not.

Keys are layer keys (strings: "fg0".."fg{K-1}", "bg", "blended"), so a bundle reads the same
in any copy of the pack's modules. ``order`` lists the FG keys back to front; ``kept`` holds
every stream's state at the first step at or after ``keep_percent`` (sigma ``kept_sigma``),
where a later re-harmonise starts from, empty when not kept. Latents are in the LATENT's
space (as ComfyUI's samplers return them). After a re-harmonise, ``images`` also holds the
effects layer (``EFFECTS_KEY``, RGBA: what the re-harmonise added around the moved layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

BG_KEY = "bg"
BLENDED_KEY = "blended"
EFFECTS_KEY = "effects"


@dataclass(frozen=True)
class LayerBundle:
    order: tuple[str, ...]  # FG keys, back to front
    names: dict[str, str]  # key -> the layer's name
    latents: dict[str, torch.Tensor]  # key -> final latent [N, 4, h, w] (every stream)
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]]  # FG key -> (soft, hard) [N, H, W], 1 = object
    prompts: dict[str, Any]  # key -> the stream's positive CONDITIONING
    negative: Any
    boxes: dict[str, Any]  # FG key -> its Box, or None
    settings: Any  # the run's SamplerSettings
    options: Any  # the run's LayerFusionOptions
    keep_percent: float | None = None
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> latent at kept_sigma
    kept_sigma: float | None = None  # sigma of the step the kept latents are at
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # after decode: FG RGBA, BG/BLENDED RGB
    model_fingerprint: str | None = None  # the run's model (comfy_runtime/model_identity.py), None if unknown

    @property
    def keys(self) -> tuple[str, ...]:
        """Every stream's key, back to front: the FG layers, BG, BLENDED."""
        return (*self.order, BG_KEY, BLENDED_KEY)

    @property
    def num_images(self) -> int:
        return next(iter(self.latents.values())).shape[0]

    def with_images(self, images: dict[str, torch.Tensor]) -> LayerBundle:
        return replace(self, images=dict(images))
