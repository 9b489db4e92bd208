"""What one LayerFusion run samples (``RunPlan``) and how (``SamplerSettings``).

A plan names the streams every image carries (K FG layers, BG, BLENDED), one positive
CONDITIONING per stream, the negative all streams share, the latent batch (N images) and the
options, which hold the blending window and the noise sharing. The triplet is the plan with
one FG; K layers, re-harmonise and decomposition are plans with more streams or pinned rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..formats import Conditioning
from ..options import BlendMode, LayerFusionOptions, NoiseOptions, require_finite
from .latent_pins import Pin
from .streams import Stream, StreamRole, StreamSet

SEED_RANGE = 2**64  # KSampler's seed widget: 0 .. 2^64 - 1


def layer_seed(seed: int, index: int) -> int:
    """The seed of layer ``index`` derived from the run's ``seed``: ``seed + index``, wrapped
    into the seed widget's range (seed 2^64 - 1 gives layer 1 the seed 0)."""
    return (seed + index) % SEED_RANGE


def signed_seed(seed: int) -> int:
    """``seed`` as a signed 64-bit number: the same generator state in torch (which reads a
    negative seed modulo 2^64), with room for the ``seed + 1`` newer ComfyUIs draw CPU step noise
    from (at 2^64 - 1 that overflows in a plain KSampler too)."""
    return seed - SEED_RANGE if seed >= SEED_RANGE // 2 else seed


@dataclass(frozen=True)
class SamplerSettings:
    """KSampler's own settings for the run."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0

    def __post_init__(self) -> None:
        require_finite("cfg", self.cfg)
        require_finite("denoise", self.denoise)
        if not 0.0 <= self.denoise <= 1.0:
            raise ValueError(f"denoise: expected 0 <= denoise <= 1, got {self.denoise}")
        if self.steps < 1:
            raise ValueError(f"steps: expected at least 1, got {self.steps}")


@dataclass(frozen=True)
class RunPolicy:
    """What a run's given parts mean: the three behaviours in which a decomposition (an
    image's layers, LAYERS.md 3.3) differs from a text run."""

    regions_are_masks: bool = False
    """A layer's box or mask is its mask itself (else it gates the layer's priors)."""
    blend_into_blended: bool = True
    """Eq. 1: the layers blend into BLENDED (off where BLENDED is pinned to an image)."""
    paste_regions: bool = True
    """FG layers with a region are pasted into BLENDED early (their z_T differs from BLENDED's;
    a decomposition's streams share z_T, so there is nothing to align)."""

    @classmethod
    def text(cls) -> RunPolicy:
        return cls()

    @classmethod
    def decomposition(cls) -> RunPolicy:
        return cls(regions_are_masks=True, blend_into_blended=False, paste_regions=False)


@dataclass(frozen=True)
class RunPlan:
    stream_set: StreamSet
    prompts: Mapping[Stream, Conditioning]
    negative: Conditioning
    latent: dict
    options: LayerFusionOptions
    regions: Mapping[Stream, torch.Tensor] = field(default_factory=dict)
    """Per FG stream with a layout, its region [H, W] at image size (1 = where the layer is)."""
    empty_contexts: Mapping[Stream, torch.Tensor] = field(default_factory=dict)
    """Per FG stream with a region, the empty prompt's context [1, T, C]: its cross-attention
    outside the region early in the run (the attention couple; options.layout)."""
    pins: tuple[Pin, ...] = ()
    """Streams (or regions of them) held to given latents (latent_pins.py)."""
    start: torch.Tensor | None = None
    """[N, C, h, w] in the LATENT's space: the state every stream starts from at the schedule's
    first sigma (an inverted image's z_T); None: the latent plus the seed's noise."""
    policy: RunPolicy = field(default_factory=RunPolicy.text)
    """What the regions and BLENDED mean in this run (a text run, or a decomposition)."""

    def __post_init__(self) -> None:
        missing = [self.stream_set.name(s) for s in self.stream_set.streams if self.prompts.get(s) is None]
        if missing:
            raise ValueError(f"missing conditioning for {', '.join(missing)}")
        unknown = [str(p.stream) for p in self.pins if p.stream not in self.stream_set.streams]
        if unknown:
            raise ValueError(f"pins: no stream {', '.join(unknown)} in this run")
        uncoupled = [self.stream_set.name(s) for s in self.empty_contexts if s not in self.regions]
        if uncoupled:
            raise ValueError(f"empty_contexts: {', '.join(uncoupled)} has no region to couple inside")
        outside = [self.stream_set.name(s) for s in self.regions if s not in self.stream_set.fg_streams]
        if outside:
            raise ValueError(f"regions: only FG layers take a box or mask, got {', '.join(outside)}")
        if not isinstance(self.latent, dict) or "samples" not in self.latent:
            raise TypeError(
                f"latent_image: expected a LATENT (a dict with 'samples'), got {type(self.latent).__name__}"
            )
        if self.start is not None and self.start.shape != self.latent["samples"].shape:
            raise ValueError(
                f"start: expected the latent's shape {list(self.latent['samples'].shape)}, got "
                f"{list(self.start.shape)}"
            )

    @classmethod
    def triplet(
        cls,
        fg: Conditioning,
        bg: Conditioning,
        blended: Conditioning,
        negative: Conditioning,
        latent: dict,
        options: LayerFusionOptions,
    ) -> RunPlan:
        """One FG, BG and BLENDED per image; in alpha mode BLENDED is not sampled."""
        stream_set = StreamSet(foregrounds=1, blended=options.blend.mode == BlendMode.GENERATIVE)
        by_role = {StreamRole.FG: fg, StreamRole.BG: bg, StreamRole.BLENDED: blended}
        return cls(stream_set, {s: by_role[s.role] for s in stream_set.streams}, negative, latent, options)

    @property
    def noise(self) -> NoiseOptions:
        return self.options.noise
