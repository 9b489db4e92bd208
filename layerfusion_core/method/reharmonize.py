"""Move and re-harmonise (LAYERS.md 2, after DreamLayer's IRH), the parts that are pure torch:
layers on their noising path, moved; the composite BLENDED starts from; the pins that hold
the moved layers' regions; the effects layer; the foreground locked over the result.

Latents are ``[N, C, h, w]`` in the LATENT's space; a stream's noisy latent at sigma is
``clean + sigma * noise`` (the sampler's own noising, up to that space's scale). Images are
``[N, H, W, C]`` in 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import ALPHA, LATENT_CELL, RGB
from ..layers.placement import Placement, place_latent_cells, place_latent_resampled
from .latent_pins import Pin


@dataclass(frozen=True)
class NoisyLatent:
    """A stream's latent on its noising path: ``clean`` (the run's final latent), ``noise``
    and ``kept``, the state the run had at ``kept_sigma`` (given back as is at that sigma)."""

    clean: torch.Tensor
    noise: torch.Tensor
    kept: torch.Tensor
    kept_sigma: float

    @classmethod
    def from_kept(cls, clean: torch.Tensor, kept: torch.Tensor, kept_sigma: float) -> NoisyLatent:
        """The path through a run's final and kept latents: the noise ``kept`` implies."""
        if not kept_sigma > 0:
            raise ValueError(f"kept_sigma: expected a noisy kept latent (sigma > 0), got {kept_sigma}")
        return cls(clean, (kept - clean) / kept_sigma, kept, kept_sigma)

    def at(self, sigma: float) -> torch.Tensor:
        """The latent at ``sigma`` (0: the clean latent)."""
        if sigma == self.kept_sigma:
            return self.kept
        return self.clean + sigma * self.noise if sigma > 0 else self.clean

    def placed(self, placements: list[Placement], fresh_noise: torch.Tensor) -> NoisyLatent:
        """The path of the moved layer, one placement per image. A move by whole cells and a
        flip permute the kept latent's cells (exact); any other placement resamples the clean
        latent and re-noises it with ``fresh_noise`` [N, C, h, w] (resampled noise would not
        be noise any more). Cells nothing lands on take the clean latent's nearest border
        cell and fresh noise."""
        cleans, noises, kepts = [], [], []
        for n, placement in enumerate(placements):
            one = slice(n, n + 1)
            clean = place_latent_resampled(self.clean[one], placement)
            fresh = fresh_noise[one].to(clean)
            height, width = (LATENT_CELL * d for d in clean.shape[-2:])
            if placement.on_cells(width, height):
                clean = place_latent_cells(self.clean[one], placement, clean)
                noise = place_latent_cells(self.noise[one], placement, fresh)
                kept = place_latent_cells(self.kept[one], placement, clean + self.kept_sigma * fresh)
            else:
                noise, kept = fresh, clean + self.kept_sigma * fresh
            cleans.append(clean)
            noises.append(noise)
            kepts.append(kept)
        return NoisyLatent(torch.cat(cleans), torch.cat(noises), torch.cat(kepts), self.kept_sigma)


def composite_over(
    base: torch.Tensor, layers: list[torch.Tensor], alphas: list[torch.Tensor]
) -> torch.Tensor:
    """Layers back to front over ``base`` by their alphas ([N, 1, h, w] at latent size):
    base * prod_k (1 - a_k) + sum_k z_k a_k prod_{f > k} (1 - a_f) (LAYERS.md 2.2)."""
    out = base
    for layer, alpha in zip(layers, alphas, strict=True):
        out = torch.lerp(out, layer, alpha.to(out))
    return out


def layer_pins(layers: list[NoisyLatent], alphas: list[torch.Tensor], until_sigma: float) -> tuple[Pin, ...]:
    """Pins of the one sampled row (every row of a BLENDED-only run) to the moved layers, back
    to front, each where its alpha is: applied in order they composite the layers over the
    row, so where a layer is opaque the row is that layer's latent at the evaluation's sigma.
    They hold while sigma > ``until_sigma``."""
    return tuple(Pin(None, layer.at, alpha, until_sigma) for layer, alpha in zip(layers, alphas, strict=True))


def alpha_over(layers: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Straight-RGBA layers [N, H, W, 4], back to front, over an RGB ``base`` [N, H, W, 3]."""
    out = base[..., :RGB].float()
    for layer in layers:
        alpha = layer[..., ALPHA:].float()
        out = torch.lerp(out, layer[..., :RGB].float(), alpha)
    return out.clamp(0, 1)


def union_alpha(layers: list[torch.Tensor]) -> torch.Tensor:
    """[N, H, W] coverage of straight-RGBA layers: 1 - prod_k (1 - a_k)."""
    free = torch.ones_like(layers[0][..., ALPHA].float())
    for layer in layers:
        free = free * (1.0 - layer[..., ALPHA].float())
    return 1.0 - free


def effects_layer(
    harmonised: torch.Tensor, background: torch.Tensor, cover: torch.Tensor, threshold: float = 0.0
) -> torch.Tensor:
    """What the re-harmonise added over the background, as straight RGBA [N, H, W, 4]: per
    pixel the least opaque colour that, put over ``background`` [N, H, W, 3], gives
    ``harmonised`` (a shadow becomes dark and partly transparent, a reflection light).
    Transparent where the two differ by at most ``threshold`` in every channel, and where
    ``cover`` [N, H, W] (the FG layers' alpha union) is 1: there the layers hide it."""
    h, b = harmonised[..., :RGB].float(), background[..., :RGB].float()
    lighter = (h - b).clamp_min(0) / (1.0 - b).clamp_min(1e-6)
    darker = (b - h).clamp_min(0) / b.clamp_min(1e-6)
    alpha = torch.maximum(lighter, darker).amax(dim=-1, keepdim=True).clamp(0, 1)
    colour = torch.where(alpha > 0, (h - b * (1.0 - alpha)) / alpha.clamp_min(1e-6), torch.zeros_like(h))
    keep = ((h - b).abs().amax(dim=-1, keepdim=True) > threshold) & (cover.unsqueeze(-1) < 1.0)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    colour = torch.where(keep, colour, torch.zeros_like(colour))
    return torch.cat((colour.clamp(0, 1), alpha), dim=-1)
