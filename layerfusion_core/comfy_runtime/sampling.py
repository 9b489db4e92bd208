"""The lockstep triplet sampling run, through ComfyUI's own samplers and schedulers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..architectures.sdxl import UNetLayout, layout_from_unet_config
from ..fg_weights import ForegroundWeights
from ..method.streams import StreamRole, StreamSet
from ..options import BlendMode, LayerFusionOptions, require_finite
from .conditioning import check_negative, eos_per_image, fg_only_conditioning, stack_conditionings
from .patching import patch_model

log = logging.getLogger(__name__)

BROWNIAN_SAMPLERS = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}


@dataclass
class TripletResult:
    latents: dict[StreamRole, torch.Tensor]  # [N, 4, h, w] per stream
    soft_mask: torch.Tensor  # [N, H, W] at image size, 1 = object
    hard_mask: torch.Tensor


def model_unet_layout(model) -> UNetLayout:
    """The transformer table of ``model`` (a ModelPatcher); refuses anything but SDXL-family UNets."""
    import comfy.model_base

    inner = getattr(model, "model", None)
    if not isinstance(inner, comfy.model_base.SDXL):
        name = type(inner).__name__ if inner is not None else type(model).__name__
        raise ValueError(
            f"model: LayerFusion needs an SDXL model (the LayerDiffuse FG weights are SDXL's), got {name}"
        )
    return layout_from_unet_config(inner.model_config.unet_config, name=type(inner.model_config).__name__)


class SharedStreamNoise:
    """A noise sampler giving every stream of an image the same per-step noise.

    It draws noise for the N images exactly as the sampler's own default would for a
    plain batch of N (white noise from a generator seeded with ``seed``, or a Brownian
    tree for SDE samplers), then repeats each image's noise over its S streams.
    """

    def __init__(
        self, sampler_name: str, image_shape, streams: int, sigmas, seed: int, device, dtype
    ) -> None:
        import comfy.k_diffusion.sampling as kds

        x = torch.zeros(image_shape, device=device, dtype=dtype)
        base = sampler_name.removesuffix("_gpu")
        if base in BROWNIAN_SAMPLERS:
            positive = sigmas[sigmas > 0]
            self._sample = kds.BrownianTreeNoiseSampler(
                x, positive.min(), sigmas.max(), seed=seed, cpu=not sampler_name.endswith("_gpu")
            )
        else:
            self._sample = kds.default_noise_sampler(x, seed=seed)
        self.streams = streams

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        return self._sample(sigma, sigma_next).repeat_interleave(self.streams, dim=0)


def _progress_callback(model, steps: int):
    """ComfyUI's preview/progress callback, checking Cancel at every step."""
    import comfy.model_management
    import latent_preview

    preview = latent_preview.prepare_callback(model, steps)

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview(step, x0, x, total_steps)

    return callback


def sample_triplet(
    model,
    weights: ForegroundWeights | None,
    options: LayerFusionOptions,
    fg: list,
    bg: list,
    blended: list,
    negative: list,
    latent: dict,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    denoise: float = 1.0,
) -> TripletResult:
    """Sample N triplets (N = the latent's batch) in one lockstep run on a clone of ``model``."""
    import comfy.sample
    import comfy.samplers

    cfg = require_finite("cfg", cfg)
    denoise = require_finite("denoise", denoise)
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise: expected 0 <= denoise <= 1, got {denoise}")
    unet = model_unet_layout(model)
    if weights is not None:
        weights.check_fits(unet)
    generative = options.blend.mode == BlendMode.GENERATIVE
    if not generative:
        log.info("LayerFusion: alpha blending mode: the BLENDED stream is not sampled; its latent repeats BG")
    stream_set = StreamSet(foregrounds=1, blended=generative)
    per_image = len(stream_set)

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    num_images = latent_image.shape[0]
    streams = {StreamRole.FG: fg, StreamRole.BG: bg, StreamRole.BLENDED: blended}
    positive = stack_conditionings(streams, stream_set, num_images)
    check_negative(negative)
    eos = eos_per_image(fg, num_images)
    if eos is None:
        log.warning(
            "LayerFusion: the fg conditioning has no EOS index (not from LayerFusionTextEncode); "
            "the content prior uses the mean over the prompt's tokens"
        )

    noise_mask = latent.get("noise_mask")
    clone, patch = patch_model(
        model, weights, options, unet, stream_set, fg_only_conditioning(fg, num_images), eos,
        prior_latent=latent_image, prior_mask=noise_mask,
    )  # fmt: skip

    if options.noise.share_initial_noise:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
        noise = noise.repeat_interleave(per_image, dim=0)
    else:
        noise = comfy.sample.prepare_noise(latent_image.repeat_interleave(per_image, dim=0), seed)
    stacked_latent = latent_image.repeat_interleave(per_image, dim=0)
    if noise_mask is not None and noise_mask.shape[0] == num_images:
        noise_mask = noise_mask.repeat_interleave(per_image, dim=0)

    ksampler = comfy.samplers.KSampler(
        clone,
        steps=steps,
        device=clone.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
    )
    sigmas = ksampler.sigmas
    start, end = patch.window
    patch.controller.plan_evaluations(sum(1 for s in sigmas[:-1].tolist() if end <= s <= start))
    sampler = comfy.samplers.sampler_object(sampler_name)
    if (
        options.noise.share_step_noise
        and "noise_sampler" in inspect.signature(sampler.sampler_function).parameters
    ):
        shared = SharedStreamNoise(
            sampler_name, latent_image.shape, per_image, sigmas, seed, clone.load_device, torch.float32
        )
        sampler.extra_options = {**sampler.extra_options, "noise_sampler": shared}

    callback = _progress_callback(clone, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(
        clone, noise, cfg, sampler, sigmas, positive, negative, stacked_latent,
        noise_mask=noise_mask, callback=callback, disable_pbar=True, seed=seed,
    )  # fmt: skip

    rows = samples.reshape(num_images, per_image, *samples.shape[1:])
    latents = {stream.role: rows[:, i] for i, stream in enumerate(stream_set.streams)}
    if not generative:
        latents[StreamRole.BLENDED] = latents[StreamRole.BG].clone()
    soft, hard = _masks_at_image_size(patch.controller.final_masks(), num_images, latent_image.shape[-2:])
    return TripletResult(latents, soft, hard)


def _masks_at_image_size(final, num_images: int, latent_hw) -> tuple[torch.Tensor, torch.Tensor]:
    size = (latent_hw[0] * 8, latent_hw[1] * 8)
    if final is None:
        zeros = torch.zeros(num_images, *size)
        return zeros, zeros.clone()
    soft, hard, grid = final
    out = []
    for mask in (soft, hard):
        grid_mask = mask.float().reshape(mask.shape[0], 1, *grid)
        out.append(
            F.interpolate(grid_mask, size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).cpu()
        )
    return out[0], out[1]
