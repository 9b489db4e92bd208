"""Variants of the tiny SDXL model for host tests (kept apart from support.tiny_sdxl)."""

from __future__ import annotations

from typing import Any

import torch

from support.tiny_sdxl import TINY_SDXL_DIM_HEAD, TINY_SDXL_UNET_CONFIG, init_weights_


def build_tiny_sdxl_inpaint(seed: int = 0) -> Any:
    """The tiny SDXL model with SDXL inpainting's 9 input channels (latent, mask, masked
    latent): ComfyUI's model gets ``concat_keys`` ("mask", "masked_image"), as a real
    SDXL inpainting checkpoint does."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL({**TINY_SDXL_UNET_CONFIG, "in_channels": 9})
    model_config.unet_config["num_head_channels"] = TINY_SDXL_DIM_HEAD
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = model_config.get_model({}, "", device=cpu)
    assert model.concat_keys == ("mask", "masked_image"), model.concat_keys
    init_weights_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
