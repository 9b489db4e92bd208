"""Sampling progress: ComfyUI's progress bar and preview, Cancel at every step, and observers
of each step's state (keeping the latents a re-harmonise starts from, inversion, tests)."""

from __future__ import annotations

from collections.abc import Callable

import torch

StepObserver = Callable[[int, float, torch.Tensor], None]
"""``observer(step, sigma, x)``: the sampler's state ``x`` (its own latent space) at the
start of each step of the schedule, after that step's pins and paste (for samplers whose
callback shows their state at the schedule's steps: not ``HIDDEN_STATE_SAMPLERS``)."""

HIDDEN_STATE_SAMPLERS = frozenset({"dpm_fast", "dpm_adaptive", "uni_pc", "uni_pc_bh2"})
"""Samplers whose steps or state are their own: dpm_fast and dpm_adaptive step on sigma grids
of their own, uni_pc keeps a state scaled by 1 / sqrt(1 + sigma^2) and evaluates the model on
a temporary copy. Their states cannot be kept at a sigma, nor pinned."""


def check_state_visible(sampler_name: str, what: str, name: str = "sampler_name") -> None:
    """ValueError naming ``name`` when ``what`` (keeping or pinning the sampler's state) cannot
    work with ``sampler_name``."""
    if sampler_name.removesuffix("_gpu") in HIDDEN_STATE_SAMPLERS:
        raise ValueError(
            f"{name}: {sampler_name} steps on its own sigmas or keeps a scaled state of its own, so {what} "
            "cannot work with it; pick euler, dpmpp_2m, dpmpp_2m_sde, heun or another k-diffusion sampler"
        )


def progress_callback(model, sigmas: torch.Tensor, observers: tuple[StepObserver, ...] = ()):
    """ComfyUI's preview/progress callback, checking Cancel at every step and showing each
    step's state to ``observers``."""
    import comfy.model_management
    import latent_preview

    preview = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    levels = sigmas.tolist()

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if step < len(levels) - 1:  # dpm_adaptive may report more steps than the schedule has
            for observe in observers:
                observe(step, levels[step], x)
        preview(step, x0, x, total_steps)

    return callback


class LatentKeeper:
    """Keeps the state at the first step whose sigma is at or below ``keep_sigma`` (what a
    later re-harmonise starts from), in the LATENT's space, and that step's sigma."""

    def __init__(self, model, keep_sigma: float) -> None:
        self.model = model
        self.keep_sigma = keep_sigma
        self.latent: torch.Tensor | None = None
        self.sigma: float | None = None

    def __call__(self, step: int, sigma: float, x: torch.Tensor) -> None:
        if self.latent is None and 0 < sigma <= self.keep_sigma:
            self.latent = self.model.model.process_latent_out(x.detach().float().clone()).cpu()
            self.sigma = sigma
