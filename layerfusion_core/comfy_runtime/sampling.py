"""The lockstep sampling run of every stream (the FG layers, BG, BLENDED) through ComfyUI's own
samplers and schedulers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..method.run_plan import RunPlan, SamplerSettings, layer_seed, signed_seed
from ..method.streams import Stream, StreamRole, StreamSet
from ..models.fg_weights import ForegroundWeights
from ..models.transparent_vae import pixel_size
from .patching import LayerFusionPatch, patch_model
from .progress import (
    HIDDEN_STATE_SAMPLERS,
    LatentKeeper,
    StepObserver,
    check_state_visible,
    progress_callback,
)
from .run_inputs import RunInputs, prepare_run

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
            return kds.default_noise_sampler(x, seed=signed_seed(seed))

        self.stream_seeds = stream_seeds
        self._samplers = {seed: sampler_for(seed) for seed in dict.fromkeys(stream_seeds)}

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        drawn = {seed: sample(sigma, sigma_next) for seed, sample in self._samplers.items()}
        if len(drawn) == 1:
            return next(iter(drawn.values())).repeat_interleave(len(self.stream_seeds), dim=0)
        per_stream = torch.stack([drawn[seed] for seed in self.stream_seeds], dim=1)  # [N, S, ...]
        return per_stream.reshape(-1, *per_stream.shape[2:])


def stream_seeds(stream_set: StreamSet, seed: int, per_layer: bool) -> list[int]:
    """The noise seed of each stream, in row order: FG_k (k >= 1) draws from seed + k (wrapped
    into the seed range) with per-layer noise (LAYERS.md 1), every other stream from the seed."""
    return [
        layer_seed(seed, stream.index) if per_layer and stream.role == StreamRole.FG else seed
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


def independent_noise(stacked_latent: torch.Tensor, seed: int, per_image: int, batch_index) -> torch.Tensor:
    """[N * S, ...] initial noise without sharing: every row its own draw, as ComfyUI draws a
    batch of N * S; with a ``batch_index`` (a latent picked from a batch) image ``b``'s rows
    get the draws of rows b * S .. b * S + S - 1, as they had in the whole batch's run."""
    import comfy.sample

    stacked_index = None
    if batch_index is not None:
        stacked_index = [int(b) * per_image + s for b in batch_index for s in range(per_image)]
    return comfy.sample.prepare_noise(stacked_latent, seed, stacked_index)


def sample_layers(
    model,
    weights: ForegroundWeights | None,
    plan: RunPlan,
    settings: SamplerSettings,
    observers: tuple[StepObserver, ...] = (),
) -> LayersResult:
    """Sample every stream of ``plan`` for N images (N = the latent's batch) in one lockstep
    run on a clone of ``model``; every stream's state is kept at ``options.layout.keep_percent``."""
    inputs = prepare_run(model, weights, plan)
    clone, patch = patch_model(model, weights, inputs)
    samples, keeper = _sample(clone, patch, inputs, settings, observers)
    return _collect(samples, patch, inputs, keeper)


def _sample(
    clone, patch: LayerFusionPatch, inputs: RunInputs, settings: SamplerSettings, observers
) -> tuple[torch.Tensor, LatentKeeper | None]:
    """The run through ComfyUI's sampler: [N * S, C, h, w] samples, and the keeper of the
    states at the keep sigma (None for a sampler that hides its state)."""
    import comfy.sample
    import comfy.samplers

    plan = inputs.plan
    ksampler = comfy.samplers.KSampler(
        clone,
        steps=settings.steps,
        device=clone.load_device,
        sampler=settings.sampler_name,
        scheduler=settings.scheduler,
        denoise=settings.denoise,
    )
    sigmas = ksampler.sigmas
    start, end = inputs.window_sigmas
    patch.controller.plan_evaluations(sum(1 for s in sigmas[:-1].tolist() if end <= s <= start))
    seeds = stream_seeds(plan.stream_set, settings.seed, plan.options.layout.per_layer_noise)
    sampler = comfy.samplers.sampler_object(settings.sampler_name)
    if (
        plan.noise.share_step_noise
        and "noise_sampler" in inspect.signature(sampler.sampler_function).parameters
    ):
        shared = SharedStreamNoise(
            settings.sampler_name, inputs.latent_image.shape, seeds, sigmas, clone.load_device, torch.float32
        )
        sampler.extra_options = {**sampler.extra_options, "noise_sampler": shared}
    keeper = _keeper(clone, plan, settings)
    if plan.pins:
        check_state_visible(settings.sampler_name, "pinning a stream")
    stacked_latent, noise = _start_and_noise(inputs, seeds, settings.seed)
    callback = progress_callback(clone, sigmas, (*((keeper,) if keeper else ()), *observers))
    samples = comfy.sample.sample_custom(
        clone, noise, settings.cfg, sampler, sigmas, inputs.positive, plan.negative, stacked_latent,
        noise_mask=inputs.noise_mask, callback=callback, disable_pbar=True, seed=settings.seed,
    )  # fmt: skip
    if inputs.edits is not None:
        inputs.edits.finish(samples)  # a pin through the end holds the final latent too
    return samples, keeper


def _keeper(clone, plan: RunPlan, settings: SamplerSettings) -> LatentKeeper | None:
    """What keeps every stream's state at ``keep_percent`` (none for a hidden-state sampler)."""
    if settings.sampler_name.removesuffix("_gpu") in HIDDEN_STATE_SAMPLERS:
        log.warning(
            "LayerFusion: %s steps on its own sigmas or keeps a scaled state: this run keeps no latents "
            "(a re-harmonise of its bundle is refused)",
            settings.sampler_name,
        )
        return None
    sampling = clone.get_model_object("model_sampling")
    return LatentKeeper(clone, float(sampling.percent_to_sigma(plan.options.layout.keep_percent)))


def _start_and_noise(inputs: RunInputs, seeds: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked start latent [N * S, ...] and its initial noise: a given start state with no
    noise, the seeds' noise shared by an image's streams, or every row its own draw."""
    plan, latent_image = inputs.plan, inputs.latent_image
    per_image = len(plan.stream_set)
    if plan.start is not None:  # every stream starts from the given state itself
        stacked = plan.start.to(latent_image).repeat_interleave(per_image, dim=0)
        return stacked, torch.zeros_like(stacked)
    stacked = latent_image.repeat_interleave(per_image, dim=0)
    batch_index = plan.latent.get("batch_index")
    if plan.noise.share_initial_noise:
        return stacked, initial_noise(latent_image, seeds, batch_index)
    return stacked, independent_noise(stacked, seed, per_image, batch_index)


def _collect(
    samples: torch.Tensor, patch: LayerFusionPatch, inputs: RunInputs, keeper: LatentKeeper | None
) -> LayersResult:
    """The run's samples by stream, the final masks at image size and the kept states."""
    stream_set, num_images = inputs.plan.stream_set, inputs.num_images
    per_image = len(stream_set)
    rows = samples.reshape(num_images, per_image, *samples.shape[1:])
    latents = {stream: rows[:, i] for i, stream in enumerate(stream_set.streams)}
    masks = _masks_at_image_size(
        patch.controller.final_masks(), stream_set, num_images, inputs.latent_image.shape[-2:]
    )
    kept = None
    if keeper is not None and keeper.latent is not None:
        kept_rows = keeper.latent.reshape(num_images, per_image, *samples.shape[1:])
        kept = KeptLatents({s: kept_rows[:, i] for i, s in enumerate(stream_set.streams)}, keeper.sigma)
    return LayersResult(latents, masks, kept)


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
