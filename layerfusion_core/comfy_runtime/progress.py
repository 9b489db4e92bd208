"""Sampling progress: ComfyUI's progress bar and preview, Cancel at every step, and observers
of each step's state (keeping the latents a re-harmonise starts from, inversion, tests)."""

from __future__ import annotations

from collections.abc import Callable

import torch

StepObserver = Callable[[int, float, torch.Tensor], None]
"""``observer(step, sigma, x)``: the sampler's state ``x`` (its own latent space) at the
start of each step, after that step's pins and paste."""


def progress_callback(model, sigmas: torch.Tensor, observers: tuple[StepObserver, ...] = ()):
    """ComfyUI's preview/progress callback, checking Cancel at every step and showing each
    step's state to ``observers``."""
    import comfy.model_management
    import latent_preview

    preview = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    levels = sigmas.tolist()

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
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
