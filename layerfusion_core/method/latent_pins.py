"""Rows of the sampler's latent, set at the start of an evaluation in place (so the sampler's
own state follows: the step is taken from the set latent). With a latent noise mask (ComfyUI's
inpainting) the model sees a masked copy of the state instead, so there the edits reach the
model's input but not the sampler's state.

- ``LatentPaste`` (LAYERS.md 1c): inside FG_k's region, BLENDED's latent is copied into
  FG_k's, z_fg = z_blend m + z_fg (1 - m), early in the run, so the object lands at the
  same place in FG_k and BLENDED although their noise differs.
- ``Pin`` (LAYERS.md 2 and 3): a stream's rows, or a region of them, held to given latents
  at every sigma of a window (re-harmonise pins the moved layers, decomposition pins
  BLENDED to the inverted latents).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .streams import CallLayout, Stream, StreamRole, StreamSet


def region_at_latent(region: torch.Tensor, latent_hw) -> torch.Tensor:
    """[H, W] region at image size -> [1, 1, h, w] at latent size (area resampling)."""
    return F.interpolate(region.float()[None, None], size=tuple(latent_hw), mode="area").clamp(0, 1)


class LatentPaste:
    """BLENDED's latent into each FG stream with a region, inside that region."""

    def __init__(self, stream_set: StreamSet, regions: Mapping[Stream, torch.Tensor], latent_hw) -> None:
        self.stream_set = stream_set
        self.blended = Stream(StreamRole.BLENDED)
        self.masks = {s: region_at_latent(r, latent_hw) for s, r in regions.items()}

    def apply(self, x: torch.Tensor) -> None:
        """``x`` [N * S, C, h, w], image-major rows of every stream: pasted in place."""
        layout = CallLayout.for_call(self.stream_set, [0], x.shape[0])
        blended = x.index_select(0, layout.index_tensor(self.blended, x.device))
        for stream, mask in self.masks.items():
            rows = layout.index_tensor(stream, x.device)
            m = mask.to(device=x.device, dtype=x.dtype)
            x.index_copy_(0, rows, torch.lerp(x.index_select(0, rows), blended, m))


@dataclass(frozen=True)
class Pin:
    """``stream`` held to ``target(sigma)`` [N, C, h, w] where ``mask`` [N or 1, 1, h, w] is
    1 (everywhere without a mask), for every evaluation at sigma >= ``until_sigma``."""

    stream: Stream
    target: Callable[[float], torch.Tensor]
    mask: torch.Tensor | None = None
    until_sigma: float = 0.0

    def apply(self, x: torch.Tensor, sigma: float, stream_set: StreamSet) -> None:
        if sigma < self.until_sigma:
            return
        layout = CallLayout.for_call(stream_set, [0], x.shape[0])
        rows = layout.index_tensor(self.stream, x.device)
        target = self.target(sigma).to(device=x.device, dtype=x.dtype)
        if self.mask is not None:
            target = torch.lerp(x.index_select(0, rows), target, self.mask.to(device=x.device, dtype=x.dtype))
        x.index_copy_(0, rows, target)


class LatentEdits:
    """What a run sets in its latent at each evaluation: the paste while sigma is above
    ``paste_sigma`` (a window ending at percent 0 pastes nothing), then every pin."""

    def __init__(
        self, stream_set: StreamSet, paste: LatentPaste | None, paste_sigma: float, pins: tuple[Pin, ...]
    ) -> None:
        self.stream_set = stream_set
        self.paste = paste
        self.paste_sigma = paste_sigma
        self.pins = pins

    def apply(self, x: torch.Tensor, sigma: float) -> None:
        if self.paste is not None and sigma > self.paste_sigma:
            self.paste.apply(x)
        for pin in self.pins:
            pin.apply(x, sigma, self.stream_set)
