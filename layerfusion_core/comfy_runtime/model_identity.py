"""Which model and VAE a bundle belongs to: a re-harmonise continues the run's own denoising
path, so it needs that run's SDXL model (not an SD 1.5, inpainting or other SDXL one) and a VAE
of the bundle's latent format.

The model is recognised by a fingerprint of a few small tensors at the UNet's ends (the input
convolution's bias, the output norm and convolution's bias): another checkpoint differs there,
while a LoRA (which patches attention and linear layers) leaves them alone, so the same model
with a LoRA still matches.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from ..layers.bundle import BG_KEY, LayerBundle
from .run_inputs import model_unet_layout

log = logging.getLogger(__name__)

FINGERPRINT_TENSORS = ("input_blocks.0.0.bias", "out.0.weight", "out.0.bias", "out.2.bias")
SDXL_LATENT_CHANNELS = 4


def model_fingerprint(model) -> str | None:
    """A short hash of the UNet's end tensors (``FINGERPRINT_TENSORS``), or None when they
    cannot be read (a model whose weights are not materialised here)."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        return None
    digest = hashlib.sha256()
    try:
        for name in FINGERPRINT_TENSORS:
            tensor = unet.get_parameter(name).detach()
            if tensor.is_meta:
                return None
            digest.update(tensor.to("cpu", torch.float32).contiguous().numpy().tobytes())
    except (AttributeError, RuntimeError, TypeError) as exc:
        log.debug("LayerFusion: no model fingerprint (%s)", exc)
        return None
    return digest.hexdigest()[:16]


def check_same_model(model, bundle: LayerBundle, name: str = "model") -> None:
    """ValueError naming ``name`` unless ``model`` is an SDXL model with the plain 4-channel
    input (no inpainting model) whose fingerprint is the bundle's (when both are known)."""
    model_unet_layout(model)  # refuses every family but SDXL by name
    channels = getattr(model.model.diffusion_model, "in_channels", SDXL_LATENT_CHANNELS)
    if channels != SDXL_LATENT_CHANNELS:
        raise ValueError(
            f"{name}: expected the SDXL model the bundle was sampled with, got a model with {channels} input "
            "channels (an inpainting model); connect the run's own model"
        )
    recorded = getattr(bundle, "model_fingerprint", None)
    given = model_fingerprint(model)
    if recorded is not None and given is not None and recorded != given:
        raise ValueError(
            f"{name}: this is not the model the bundle was sampled with (its weights differ): a "
            "re-harmonise continues that run's own denoising from its kept latents; connect the same "
            "checkpoint (a LoRA on it is fine)"
        )


def check_vae_fits(vae, bundle: LayerBundle, name: str = "vae") -> None:
    """ValueError naming ``name`` unless the VAE decodes the bundle's latents to its images'
    size (the same latent channels and scale)."""
    latent = bundle.latents[BG_KEY]
    channels = getattr(vae, "latent_channels", None)
    if channels is not None and channels != latent.shape[1]:
        raise ValueError(
            f"{name}: expected a VAE of {latent.shape[1]}-channel latents (the bundle's), got one of "
            f"{channels} channels; connect the SDXL VAE the bundle was decoded with"
        )
    scale = _downscale(vae)
    if scale is None or not bundle.images:
        return
    height, width = bundle.images[BG_KEY].shape[1:3]
    expected = (height // latent.shape[-2], width // latent.shape[-1])
    if (scale, scale) != expected:
        raise ValueError(
            f"{name}: this VAE scales latents by {scale}, the bundle's images are {expected[0]}x its "
            "latents; connect the SDXL VAE the bundle was decoded with"
        )


def _downscale(vae) -> int | None:
    """The VAE's spatial scale (8 for SDXL's), when it states one as a number."""
    ratio = getattr(vae, "downscale_ratio", None)
    if isinstance(ratio, int) and not isinstance(ratio, bool):
        return ratio
    if isinstance(ratio, float) and ratio.is_integer():
        return int(ratio)
    return None
