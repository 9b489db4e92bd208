"""One plain stream per image sampled from a given state through ComfyUI's own sampler, with
pins (the re-harmonise's BLENDED row; the decomposition's inversion): no FG weights, no
blending, no extra UNet work. The state is given as it is: sampling starts at ``sigmas[0]``
from ``start`` itself (zero noise is added), so any noisy latent, or a clean one for an
inversion, can start a run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import Conditioning
from ..method.latent_pins import LatentEdits, Pin
from .progress import StepObserver, progress_callback

PIN_WRAPPER_KEY = "layerfusion_pins"


@dataclass(frozen=True)
class RowGuidance:
    """How the rows are guided: their prompt, the negative, the CFG scale, the sampler, and the
    seed of the per-step noise of ancestral and SDE samplers."""

    positive: Conditioning
    negative: Conditioning
    cfg: float
    sampler_name: str
    seed: int = 0


def sample_rows(
    model,
    guidance: RowGuidance,
    start: torch.Tensor,
    sigmas: torch.Tensor,
    pins: tuple[Pin, ...] = (),
    observers: tuple[StepObserver, ...] = (),
) -> torch.Tensor:
    """``start`` [N, C, h, w] (the LATENT's space) sampled over ``sigmas`` on a clone of
    ``model``; the pins (of every row) hold it at each evaluation. Returns [N, C, h, w] in the
    LATENT's space."""
    import comfy.patcher_extension
    import comfy.sample
    import comfy.samplers

    clone = model.clone()
    edits = LatentEdits(None, None, float("inf"), pins, clone.model.process_latent_in)
    if pins:

        def hold(executor, x, timestep, model_options, seed):
            edits.apply(x, float(timestep.reshape(-1)[0]))
            return executor(x, timestep, model_options, seed)

        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, PIN_WRAPPER_KEY, hold)
    latent = comfy.sample.fix_empty_latent_channels(clone, start)
    sampler = comfy.samplers.sampler_object(guidance.sampler_name)
    samples = comfy.sample.sample_custom(
        clone, torch.zeros_like(latent), guidance.cfg, sampler, sigmas, guidance.positive, guidance.negative,
        latent, callback=progress_callback(clone, sigmas, observers), disable_pbar=True, seed=guidance.seed,
    )  # fmt: skip
    edits.finish(samples)
    return samples


def schedule(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The sigmas a KSampler with these settings samples over."""
    import comfy.samplers

    return comfy.samplers.KSampler(
        model,
        steps=steps,
        device=model.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
    ).sigmas
