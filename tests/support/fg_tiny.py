"""Tiny LayerDiffuse-format FG weights that fit a given ComfyUI model (tests only)."""

import torch

from layerfusion_core.architectures.sdxl import layout_from_unet_config
from layerfusion_core.fg_weights import parse_foreground_weights


def tiny_lora_state_dict(model, rank: int = 4, scale: float = 0.1, seed: int = 1) -> dict[str, torch.Tensor]:
    layout = layout_from_unet_config(model.model.model_config.unet_config)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for p in layout.projections:
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = (
            torch.randn(p.shape[0], rank, generator=g) * scale
        )
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = (
            torch.randn(rank, p.shape[1], generator=g) * scale
        )
    return sd


def tiny_fg_weights(model, strength: float = 1.0, application: str = "on_the_fly", **kwargs):
    layout = layout_from_unet_config(model.model.model_config.unet_config)
    weights = parse_foreground_weights(tiny_lora_state_dict(model, **kwargs), layout, source="tiny")
    return weights.with_settings(strength, application)
