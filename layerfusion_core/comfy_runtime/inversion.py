"""Inversion of one latent row through ComfyUI's own model and schedule (LAYERS.md 3.1):
deterministic ``euler`` over the flipped sigmas of the run's schedule, cfg 1, the image's
prompt, keeping the latent at every sigma. With noise off, euler from a clean latent up the
flipped schedule is DDIM inversion for EPS models; replaying the schedule from its end
(unpinned, the same prompt, cfg 1, euler) comes back to the latent up to the discretisation
error, which shrinks with more steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import Conditioning
from .progress import StepObserver
from .row_sampling import RowGuidance, sample_rows

FLIPPED_ZERO = 1e-4  # what a flipped schedule's leading 0 becomes (ComfyUI's FlipSigmas)
INVERSION_SAMPLER = "euler"
INVERSION_CFG = 1.0


@dataclass(frozen=True)
class InvertedPath:
    """A latent's states at the sigmas of a schedule (in the LATENT's space): ``latents[i]`` at
    ``sigmas[i]``, descending, the last at sigma 0 being the input itself. ``at(sigma)`` gives
    the state at any sigma in between (linear between the two kept neighbours), as a
    multi-evaluation sampler asks for."""

    sigmas: tuple[float, ...]
    latents: tuple[torch.Tensor, ...]

    @property
    def start(self) -> torch.Tensor:
        """The state at the schedule's first sigma (z_T for a full schedule)."""
        return self.latents[0]

    def at(self, sigma: float) -> torch.Tensor:
        for i, level in enumerate(self.sigmas):
            if sigma >= level * (1 - 1e-6):
                if i == 0 or sigma <= level * (1 + 1e-6):
                    return self.latents[i]
                upper = self.sigmas[i - 1]
                weight = (sigma - level) / (upper - level)
                return torch.lerp(self.latents[i], self.latents[i - 1], weight)
        return self.latents[-1]


def flipped(sigmas: torch.Tensor) -> torch.Tensor:
    """The schedule reversed, a leading 0 replaced by ``FLIPPED_ZERO`` (a sampler cannot step
    from sigma 0)."""
    out = sigmas.flip(0).clone()
    if out[0] == 0:
        out[0] = FLIPPED_ZERO
    return out


def invert(
    model,
    positive: Conditioning,
    negative: Conditioning,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    observers: tuple[StepObserver, ...] = (),
) -> InvertedPath:
    """``latent`` [N, C, h, w] (the LATENT's space, e.g. a VAE encode) inverted up ``sigmas``
    (a run's schedule, descending to 0). Progress bar and Cancel at every step."""
    up = flipped(sigmas)
    to_latent = model.model.process_latent_out
    states: list[torch.Tensor] = []

    def keep(step: int, sigma: float, x: torch.Tensor) -> None:
        states.append(to_latent(x.detach().float().clone()).cpu())

    guidance = RowGuidance(positive, negative, INVERSION_CFG, INVERSION_SAMPLER)
    top = sample_rows(model, guidance, latent, up, (), (keep, *observers))
    states[0] = latent.detach().float().cpu()  # the state "at 1e-4" is the input itself
    states.append(top.float().cpu())
    levels = [float(s) for s in sigmas]
    return InvertedPath(tuple(levels), tuple(reversed(states)))
