"""Variants of the tiny SDXL model for host tests (kept apart from support.tiny_sdxl)."""

from __future__ import annotations

from typing import Any

from support.tiny_sdxl import TINY_SDXL_UNET_CONFIG, init_weights_, patcher_of


def build_tiny_sdxl_inpaint(seed: int = 0) -> Any:
    """The tiny SDXL model with SDXL inpainting's 9 input channels (latent, mask, masked
    latent): ComfyUI's model gets ``concat_keys`` ("mask", "masked_image"), as a real
    SDXL inpainting checkpoint does."""
    import comfy.supported_models

    patcher = patcher_of(comfy.supported_models.SDXL({**TINY_SDXL_UNET_CONFIG, "in_channels": 9}), seed)
    assert patcher.model.concat_keys == ("mask", "masked_image"), patcher.model.concat_keys
    return patcher


def build_tiny_sd15(seed: int = 0) -> Any:
    """A tiny SD 1.5-architecture model (comfy.model_base.BaseModel: no pooled input, plain
    transformer projections), random weights, float32 on the CPU."""
    import comfy.supported_models

    config = {
        **TINY_SDXL_UNET_CONFIG,
        "adm_in_channels": None,
        "num_classes": None,
        "use_linear_in_transformer": False,
    }
    return patcher_of(comfy.supported_models.SD15(config), seed)


def tiny_vae_with_latent_channels(channels: int, seed: int = 1) -> Any:
    """A real comfy.sd.VAE (TAESD architecture, random weights) whose latents have
    ``channels`` channels (16: as SD3's and Flux's VAEs)."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=channels)
    init_weights_(taesd, seed)
    return comfy.sd.VAE(sd=taesd.state_dict())
