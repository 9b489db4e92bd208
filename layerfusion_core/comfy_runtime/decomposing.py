"""Image to layers (LAYERS.md 3): an image VAE-encoded, its BLENDED row inverted up the run's
schedule, then a layered run of every stream from the inverted start with BLENDED pinned to
the inverted latents at every sigma (read-only ground truth): each FG layer takes BLENDED's
attention where it is visible (Eq. 2, masks from its box or MASK, else its priors), BG sees
BLENDED only outside the objects (masked sharing), so it fills in what is behind them. The
result is the same layer bundle as a text run, so decode and re-harmonise work on photos."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..formats import LATENT_CELL, RGB
from ..layers.bundle import LayerBundle
from ..layers.prompts import LayeredPrompts
from ..method.latent_pins import Pin
from ..method.run_plan import RunPolicy, SamplerSettings
from ..method.streams import Stream, StreamRole
from ..models.fg_weights import ForegroundWeights
from ..options import BlendMode, LayerFusionOptions
from .conditioning import single_entry
from .inversion import invert
from .layered import layer_bundle, layered_plan
from .model_identity import model_fingerprint
from .progress import StepObserver, check_state_visible
from .row_sampling import schedule
from .sampling import sample_layers


def check_image(image, name: str = "image") -> None:
    """ValueError naming ``name`` unless ``image`` is an RGB IMAGE batch [N, H, W, 3] of finite
    values whose sides are multiples of 8 (one latent cell)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or 0 in image.shape:
        got = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE [N, H, W, 3], got {got}")
    channels = image.shape[-1]
    if channels == RGB + 1:
        raise ValueError(
            f"{name}: expected an RGB IMAGE, got RGBA (4 channels); composite it over a background first, "
            "or give its alpha to a LayerFusion Layer Prompt's mask (Load Image's MASK is 1 - alpha: invert it)"
        )
    if channels != RGB:
        raise ValueError(f"{name}: expected an RGB IMAGE with 3 channels, got {channels}")
    height, width = image.shape[1:3]
    if height % LATENT_CELL or width % LATENT_CELL:
        raise ValueError(
            f"{name}: expected a width and height that are multiples of {LATENT_CELL}, got {width}x{height}; "
            f"crop or scale it (e.g. ImageScale to {width // LATENT_CELL * LATENT_CELL}x"
            f"{height // LATENT_CELL * LATENT_CELL})"
        )
    if not torch.isfinite(image).all():
        raise ValueError(f"{name}: expected finite pixel values, got NaN or Inf")


def encode_image(vae, image: torch.Tensor) -> torch.Tensor:
    """The image's latent [N, C, h, w] in the LATENT's space, as VAE Encode makes it."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    return vae.encode(image[..., :RGB]).to(mm.intermediate_device(), torch.float32)


def decompose(
    model,
    weights: ForegroundWeights | None,
    vae,
    image: torch.Tensor,
    prompts: LayeredPrompts,
    settings: SamplerSettings,
    options: LayerFusionOptions,
    observers: tuple[StepObserver, ...] = (),
) -> LayerBundle:
    """The layers of every image of ``image`` [N, H, W, 3]: the chain's FG layers, BG behind
    them and BLENDED (the image's reconstruction); ``prompts.blended`` is the image's prompt."""
    check_image(image)
    if options.blend.mode != BlendMode.GENERATIVE:
        raise ValueError(
            "blend_options: a decomposition needs the generative mode (its blended stream is the image)"
        )
    check_state_visible(settings.sampler_name, "a decomposition (its blended stream is pinned)")
    if not settings.denoise > 0:
        raise ValueError(
            f"denoise: expected a denoise above 0 (the part of the schedule inverted), got {settings.denoise}"
        )
    image_prompt = prompts.blended
    single_entry("image_prompt", image_prompt)  # named as the node's input, not as the blended stream
    latent = encode_image(vae, image)
    plan = layered_plan(prompts, {"samples": latent}, options)
    sigmas = schedule(model, settings.steps, settings.sampler_name, settings.scheduler, settings.denoise)
    path = invert(model, image_prompt, prompts.negative, latent, sigmas)
    pinned = Pin(Stream(StreamRole.BLENDED), path.at)
    plan = replace(plan, pins=(pinned,), start=path.start, policy=RunPolicy.decomposition())
    result = sample_layers(model, weights, plan, settings, observers)
    return layer_bundle(prompts.chain, plan, result, settings, model_fingerprint(model))
