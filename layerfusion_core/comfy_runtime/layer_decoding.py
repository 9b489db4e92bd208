"""Decoding a layer bundle: every stream through ComfyUI's VAE (which manages its own
memory), then each FG layer through the transparent decoder (``decode_rgba``: progress per
pass, Cancel between passes)."""

from __future__ import annotations

import torch

from ..layers.bundle import LayerBundle
from .decoding import decode_rgba
from .loaders import LoadedDecoder


def vae_decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] float32 on ComfyUI's intermediate device: ``vae.decode``, with a video
    VAE's frames folded into the batch as VAE Decode shows them."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images.to(mm.intermediate_device(), torch.float32)


def decode_layers(bundle: LayerBundle, vae, decoder: LoadedDecoder, tta: bool, sub_batch: int) -> LayerBundle:
    """The bundle with its images: FG keys -> straight RGBA [N, H, W, 4], BG and BLENDED ->
    RGB [N, H, W, 3]."""
    images = {}
    for key in bundle.keys:
        rgb = vae_decode(vae, bundle.latents[key])
        if key in bundle.order:
            rgba, _, _ = decode_rgba(decoder, bundle.latents[key], rgb, tta, sub_batch)
            images[key] = rgba
        else:
            images[key] = rgb
    return bundle.with_images(images)
