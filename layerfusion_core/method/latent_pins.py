"""Rows of the sampler's latent, set at the start of an evaluation in place (so the sampler's
own state follows: the step is taken from the set latent). With a latent noise mask (ComfyUI's
inpainting) the model sees a masked copy of the state instead, so there the edits reach the
model's input but not the sampler's state.

- ``LatentPaste`` (LAYERS.md 1c): inside FG_k's region, BLENDED's latent is copied into
  FG_k's, z_fg = z_blend m + z_fg (1 - m), early in the run, so the object lands at the
  same place in FG_k and BLENDED although their noise differs.
- ``Pin`` (LAYERS.md 2 and 3): a stream's rows, or a region of them, held to given latents
  at every sigma of a window: re-harmonise pins the moved layers' regions of its one sampled
  row, decomposition pins BLENDED to the inverted latents. One mechanism for both.
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


LatentMap = Callable[[torch.Tensor], torch.Tensor]


def _same(z: torch.Tensor) -> torch.Tensor:
    return z


@dataclass(frozen=True)
class Pin:
    """``stream``'s rows (every row when None) held to ``target(sigma)`` [N, C, h, w] where
    ``mask`` [N or 1, 1, h, w] is 1 (everywhere without a mask; in between, a blend), for every
    evaluation at sigma > ``until_sigma``; a pin with ``until_sigma`` <= 0 holds through the
    end, the final latent included. Targets are in the latent space the sampler returns (a
    LATENT's); ``to_model`` maps them into the sampler's own when applied during sampling."""

    stream: Stream | None
    target: Callable[[float], torch.Tensor]
    mask: torch.Tensor | None = None
    until_sigma: float = 0.0

    def holds(self, sigma: float) -> bool:
        return sigma > self.until_sigma or self.until_sigma <= 0.0

    def apply(
        self,
        x: torch.Tensor,
        sigma: float,
        stream_set: StreamSet | None = None,
        to_model: LatentMap = _same,
    ) -> None:
        """Set the pinned rows of ``x`` [rows, C, h, w] in place (image-major rows of
        ``stream_set``'s streams; for a pin of every row, ``x`` holds one row per image)."""
        if not self.holds(sigma):
            return
        if self.stream is None:
            rows = torch.arange(x.shape[0], device=x.device)
        else:
            if stream_set is None:
                raise ValueError(f"Pin of {self.stream}: the run's stream set is needed to find its rows")
            rows = CallLayout.for_call(stream_set, [0], x.shape[0]).index_tensor(self.stream, x.device)
        target = to_model(self.target(sigma)).to(device=x.device, dtype=x.dtype)
        if self.mask is not None:
            target = torch.lerp(x.index_select(0, rows), target, self.mask.to(device=x.device, dtype=x.dtype))
        x.index_copy_(0, rows, target)


class LatentEdits:
    """What a run sets in its latent at each evaluation: every pin in order (so pins of layers
    back to front composite them), mapped into the sampler's latent space by ``to_model``;
    then the paste while sigma is above ``paste_sigma`` (a window ending at percent 0 pastes
    nothing)."""

    def __init__(
        self,
        stream_set: StreamSet | None,
        paste: LatentPaste | None,
        paste_sigma: float,
        pins: tuple[Pin, ...],
        to_model: LatentMap = _same,
    ) -> None:
        self.stream_set = stream_set
        self.paste = paste
        self.paste_sigma = paste_sigma
        self.pins = pins
        self.to_model = to_model

    def apply(self, x: torch.Tensor, sigma: float) -> None:
        for pin in self.pins:
            pin.apply(x, sigma, self.stream_set, self.to_model)
        if self.paste is not None and sigma > self.paste_sigma:
            self.paste.apply(x)  # after the pins: a pinned BLENDED is pasted as pinned

    def finish(self, samples: torch.Tensor) -> None:
        """The pins that hold through the end, on the final latent (in the LATENT's space)."""
        for pin in self.pins:
            if pin.until_sigma <= 0:
                pin.apply(samples, 0.0, self.stream_set)
