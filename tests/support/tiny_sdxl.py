"""A tiny SDXL-architecture model with random weights, and conditionings and latents for it.
Building the model expects ``comfy_import.import_comfyui`` to have run."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    "model_channels": 32,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 1, 1],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 64,
    "adm_in_channels": 32 + 6 * 256,
    "use_linear_in_transformer": True,
    "use_spatial_transformer": True,
    "use_temporal_attention": False,
    "legacy": False,
    "num_classes": "sequential",
    "image_size": 32,  # required by UNetModel, unused by SDXL
    "in_channels": 4,
    "out_channels": 4,
}
TINY_SDXL_CONTEXT_DIM = 64
TINY_SDXL_POOLED_DIM = 32
TINY_SDXL_DIM_HEAD = 16


class TinyBlock(NamedTuple):
    key: tuple[str, int, int]
    """(block name, block id, index inside that SpatialTransformer): ComfyUI's replace key."""
    channels: int
    heads: int


def _tiny_blocks() -> tuple[TinyBlock, ...]:
    narrow = (64, 64 // TINY_SDXL_DIM_HEAD)
    wide = (128, 128 // TINY_SDXL_DIM_HEAD)
    layout = [
        (("input", 4), 2, narrow),
        (("input", 5), 2, narrow),
        (("input", 7), 1, wide),
        (("input", 8), 1, wide),
        (("middle", 0), 1, wide),
        (("output", 0), 1, wide),
        (("output", 1), 1, wide),
        (("output", 2), 1, wide),
        (("output", 3), 2, narrow),
        (("output", 4), 2, narrow),
        (("output", 5), 2, narrow),
    ]
    return tuple(
        TinyBlock((name, block_id, index), ch, heads)
        for (name, block_id), depth, (ch, heads) in layout
        for index in range(depth)
    )


TINY_SDXL_BLOCKS: tuple[TinyBlock, ...] = _tiny_blocks()
"""The tiny model's 16 transformer blocks, in UNet execution order (SDXL's layout with depth 10
cut to 1; the same block names and ids as SDXL's 70 blocks)."""


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """Deterministic init: matrices/kernels N(0, 1/fan_in), 1-D weights (norm scales) 1,
    biases N(0, 0.01^2). comfy.ops layers are created uninitialised, so every parameter is set."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)


def build_tiny_sdxl(seed: int = 0) -> Any:
    """A ModelPatcher around a random-weight SDXL-architecture model (comfy.model_base.SDXL,
    EPS, float32, CPU): about 6.7 M parameters, heads of 16 channels (4 heads at 64 channels,
    8 at 128), context 64, pooled 32."""
    import comfy.supported_models

    return patcher_of(comfy.supported_models.SDXL(TINY_SDXL_UNET_CONFIG), seed)


def patcher_of(model_config: Any, seed: int) -> Any:
    """A ModelPatcher on the CPU around the model of a ComfyUI ``model_config`` (its
    unet_config tiny), random weights of ``seed``, heads of ``TINY_SDXL_DIM_HEAD``, float32."""
    import comfy.model_patcher

    # BASE.__init__ overwrites num_heads/num_head_channels with (-1, 64): set ours afterwards.
    model_config.unet_config["num_head_channels"] = TINY_SDXL_DIM_HEAD
    model_config.unet_config["num_heads"] = -1
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = model_config.get_model({}, "", device=cpu)
    init_weights_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def make_cond(
    seed: int,
    tokens: int = 77,
    context_dim: int = TINY_SDXL_CONTEXT_DIM,
    pooled: int = TINY_SDXL_POOLED_DIM,
    batch: int = 1,
) -> list[list[Any]]:
    """A CONDITIONING without text encoders: [[cond [batch, tokens, context_dim],
    {"pooled_output": [batch, pooled]}]], the same tensors for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=generator)
    pooled_output = torch.randn(batch, pooled, generator=generator)
    return [[cond, {"pooled_output": pooled_output}]]


def make_latent(batch: int = 3, height: int = 16, width: int = 16) -> dict[str, torch.Tensor]:
    """An empty LATENT of ``batch`` rows, [batch, 4, height, width] (latent pixels)."""
    return {"samples": torch.zeros(batch, 4, height, width)}
