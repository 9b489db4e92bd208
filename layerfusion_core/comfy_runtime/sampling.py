"""The lockstep triplet sampling run, through ComfyUI's own samplers and schedulers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..architectures.sdxl import UNetLayout, layout_from_unet_config
from ..method.latent_pins import LatentEdits, LatentPaste
from ..method.run_plan import RunPlan, SamplerSettings
from ..method.streams import Stream, StreamRole, StreamSet
from ..models.fg_weights import ForegroundWeights
from ..models.transparent_vae import pixel_size
from .conditioning import check_negative, eos_per_stream, fg_only_conditioning, stack_conditionings
from .patching import patch_model
from .progress import (
    HIDDEN_STATE_SAMPLERS,
    LatentKeeper,
    StepObserver,
    check_state_visible,
    progress_callback,
)

log = logging.getLogger(__name__)

BROWNIAN_SAMPLERS = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}


@dataclass(frozen=True)
class KeptLatents:
    """Every stream's state at one step of the run (in the LATENT's space) and that step's sigma."""

    latents: dict[Stream, torch.Tensor]  # [N, 4, h, w] per stream
    sigma: float


@dataclass
class LayersResult:
    """What a run gives back: every stream's final latent, each FG stream's final masks, and
    the states kept for a later re-harmonise (None when no step reached the keep sigma)."""

    latents: dict[Stream, torch.Tensor]  # [N, 4, h, w] per stream
    masks: dict[Stream, tuple[torch.Tensor, torch.Tensor]]  # (soft, hard) [N, H, W] at image size
    kept: KeptLatents | None = None


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
    """A noise sampler giving the streams of an image their per-step noise.

    For each distinct stream seed it draws noise for the N images exactly as the sampler's
    own default would for a plain batch of N (white noise from a generator seeded with that
    seed, or a Brownian tree for SDE samplers); each stream of an image gets its seed's noise
    (the same seed for every stream: the same noise, as one plain run would draw).
    """

    def __init__(
        self, sampler_name: str, image_shape, stream_seeds: list[int], sigmas, device, dtype
    ) -> None:
        import comfy.k_diffusion.sampling as kds

        x = torch.zeros(image_shape, device=device, dtype=dtype)
        base = sampler_name.removesuffix("_gpu")

        def sampler_for(seed: int):
            if base in BROWNIAN_SAMPLERS:
                positive = sigmas[sigmas > 0]
                return kds.BrownianTreeNoiseSampler(
                    x, positive.min(), sigmas.max(), seed=seed, cpu=not sampler_name.endswith("_gpu")
                )
            return kds.default_noise_sampler(x, seed=seed)

        self.stream_seeds = stream_seeds
        self._samplers = {seed: sampler_for(seed) for seed in dict.fromkeys(stream_seeds)}

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        drawn = {seed: sample(sigma, sigma_next) for seed, sample in self._samplers.items()}
        if len(drawn) == 1:
            return next(iter(drawn.values())).repeat_interleave(len(self.stream_seeds), dim=0)
        per_stream = torch.stack([drawn[seed] for seed in self.stream_seeds], dim=1)  # [N, S, ...]
        return per_stream.reshape(-1, *per_stream.shape[2:])


def stream_seeds(stream_set: StreamSet, seed: int, per_layer: bool) -> list[int]:
    """The noise seed of each stream, in row order: FG_k (k >= 1) draws from seed + k with
    per-layer noise (LAYERS.md 1), every other stream from the seed itself."""
    return [
        seed + stream.index if per_layer and stream.role == StreamRole.FG else seed
        for stream in stream_set.streams
    ]


def initial_noise(latent_image: torch.Tensor, seeds: list[int], batch_index) -> torch.Tensor:
    """[N * S, ...] initial noise, image-major: each stream of an image the noise ComfyUI
    would give that image in a plain run with the stream's seed."""
    import comfy.sample

    drawn = {
        seed: comfy.sample.prepare_noise(latent_image, seed, batch_index) for seed in dict.fromkeys(seeds)
    }
    if len(drawn) == 1:
        return next(iter(drawn.values())).repeat_interleave(len(seeds), dim=0)
    per_stream = torch.stack([drawn[seed] for seed in seeds], dim=1)
    return per_stream.reshape(-1, *per_stream.shape[2:])


def sample_layers(
    model,
    weights: ForegroundWeights | None,
    plan: RunPlan,
    settings: SamplerSettings,
    observers: tuple[StepObserver, ...] = (),
) -> LayersResult:
    """Sample every stream of ``plan`` for N images (N = the latent's batch) in one lockstep
    run on a clone of ``model``; every stream's state is kept at ``options.layout.keep_percent``."""
    import comfy.sample
    import comfy.samplers

    unet = model_unet_layout(model)
    if weights is not None:
        weights.check_fits(unet)
    options, stream_set = plan.options, plan.stream_set
    if not stream_set.blended:
        log.info("LayerFusion: alpha blending mode: the BLENDED stream is not sampled; its latent repeats BG")
    per_image, foregrounds = len(stream_set), stream_set.foregrounds

    latent_image = comfy.sample.fix_empty_latent_channels(model, plan.latent["samples"])
    num_images = latent_image.shape[0]
    positive = stack_conditionings(plan.prompts, stream_set, num_images)
    check_negative(plan.negative)
    eos = eos_per_stream(plan.prompts, stream_set, num_images)
    if eos is None:
        log.warning(
            "LayerFusion: the fg conditioning has no EOS index (not from LayerFusionTextEncode); "
            "the content prior uses the mean over the prompt's tokens"
        )

    noise_mask = plan.latent.get("noise_mask")
    per_image_mask = noise_mask is not None and noise_mask.shape[0] == num_images
    prior_mask = noise_mask.repeat_interleave(foregrounds, dim=0) if per_image_mask else noise_mask
    clone, patch = patch_model(
        model, weights, options, unet, stream_set, fg_only_conditioning(plan.prompts, stream_set, num_images), eos,
        prior_latent=latent_image.repeat_interleave(foregrounds, dim=0), prior_mask=prior_mask,
        regions=plan.regions, edits=_latent_edits(model, plan, latent_image.shape[-2:]),
        empty_contexts=plan.empty_contexts, decompose=plan.decompose,
    )  # fmt: skip

    seeds = stream_seeds(stream_set, settings.seed, options.layout.per_layer_noise)
    stacked_latent = latent_image.repeat_interleave(per_image, dim=0)
    if plan.start is not None:  # every stream starts from the given state itself
        stacked_latent = plan.start.to(latent_image).repeat_interleave(per_image, dim=0)
        noise = torch.zeros_like(stacked_latent)
    elif plan.noise.share_initial_noise:
        noise = initial_noise(latent_image, seeds, plan.latent.get("batch_index"))
    else:
        noise = comfy.sample.prepare_noise(stacked_latent, settings.seed)
    if per_image_mask:
        noise_mask = noise_mask.repeat_interleave(per_image, dim=0)

    ksampler = comfy.samplers.KSampler(
        clone,
        steps=settings.steps,
        device=clone.load_device,
        sampler=settings.sampler_name,
        scheduler=settings.scheduler,
        denoise=settings.denoise,
    )
    sigmas = ksampler.sigmas
    start, end = patch.window
    patch.controller.plan_evaluations(sum(1 for s in sigmas[:-1].tolist() if end <= s <= start))
    sampler = comfy.samplers.sampler_object(settings.sampler_name)
    if (
        plan.noise.share_step_noise
        and "noise_sampler" in inspect.signature(sampler.sampler_function).parameters
    ):
        shared = SharedStreamNoise(
            settings.sampler_name, latent_image.shape, seeds, sigmas, clone.load_device, torch.float32
        )
        sampler.extra_options = {**sampler.extra_options, "noise_sampler": shared}

    keep_sigma = float(clone.get_model_object("model_sampling").percent_to_sigma(options.layout.keep_percent))
    keeper = LatentKeeper(clone, keep_sigma)
    if settings.sampler_name.removesuffix("_gpu") in HIDDEN_STATE_SAMPLERS:
        log.warning(
            "LayerFusion: %s steps on its own sigmas or keeps a scaled state: this run keeps no latents "
            "(a re-harmonise of its bundle is refused)",
            settings.sampler_name,
        )
        keeper = None
    if plan.pins:
        check_state_visible(settings.sampler_name, "pinning a stream")
    callback = progress_callback(clone, sigmas, (*((keeper,) if keeper else ()), *observers))
    samples = comfy.sample.sample_custom(
        clone, noise, settings.cfg, sampler, sigmas, positive, plan.negative, stacked_latent,
        noise_mask=noise_mask, callback=callback, disable_pbar=True, seed=settings.seed,
    )  # fmt: skip

    if patch.edits is not None:
        patch.edits.finish(samples)  # a pin through the end holds the final latent too
    rows = samples.reshape(num_images, per_image, *samples.shape[1:])
    latents = {stream: rows[:, i] for i, stream in enumerate(stream_set.streams)}
    masks = _masks_at_image_size(
        patch.controller.final_masks(), stream_set, num_images, latent_image.shape[-2:]
    )
    kept = None
    if keeper is not None and keeper.latent is not None:
        kept_rows = keeper.latent.reshape(num_images, per_image, *samples.shape[1:])
        kept = KeptLatents({s: kept_rows[:, i] for i, s in enumerate(stream_set.streams)}, keeper.sigma)
    return LayersResult(latents, masks, kept)


def _latent_edits(model, plan: RunPlan, latent_hw) -> LatentEdits | None:
    """The paste (FG layers with a region, while BLENDED is sampled) and the plan's pins."""
    paste = None
    if plan.regions and plan.stream_set.blended and not plan.decompose:  # a decomposition's layers
        paste = LatentPaste(plan.stream_set, plan.regions, latent_hw)  # share z_T: nothing to align
    if paste is None and not plan.pins:
        return None
    sampling = model.get_model_object("model_sampling")
    paste_sigma = float(sampling.percent_to_sigma(plan.options.layout.paste_end_percent))
    return LatentEdits(plan.stream_set, paste, paste_sigma, plan.pins, model.model.process_latent_in)


def sample_triplet(
    model, weights: ForegroundWeights | None, plan: RunPlan, settings: SamplerSettings
) -> TripletResult:
    """``sample_layers`` for a one-FG plan, by role; in alpha mode BLENDED repeats BG."""
    if plan.stream_set.foregrounds != 1:
        raise ValueError(
            f"sample_triplet: expected a plan with one FG stream, got {plan.stream_set.foregrounds}"
        )
    result = sample_layers(model, weights, plan, settings)
    latents = {stream.role: latent for stream, latent in result.latents.items()}
    if not plan.stream_set.blended:
        latents[StreamRole.BLENDED] = latents[StreamRole.BG].clone()
    soft, hard = result.masks[plan.stream_set.fg_streams[0]]
    return TripletResult(latents, soft, hard)


def _masks_at_image_size(
    final, stream_set: StreamSet, num_images: int, latent_hw
) -> dict[Stream, tuple[torch.Tensor, torch.Tensor]]:
    """The final (soft, hard) masks of every FG stream at image size ([N, H, W]); zeros
    where nothing was recorded."""
    size = tuple(pixel_size(latent_hw))
    if final is None:
        zeros = torch.zeros(num_images, *size)
        return {s: (zeros, zeros.clone()) for s in stream_set.fg_streams}
    masks, grid = final
    out = {}
    for stream, pair in masks.items():
        resized = []
        for mask in pair:
            grid_mask = mask.float().expand(num_images, -1).reshape(num_images, 1, *grid)
            resized.append(
                F.interpolate(grid_mask, size=size, mode="bilinear", align_corners=False)[:, 0]
                .clamp(0, 1)
                .cpu()
            )
        out[stream] = (resized[0], resized[1])
    return out
