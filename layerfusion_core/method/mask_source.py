"""Where an evaluation's soft and hard masks come from.

``PriorMasks`` builds them from the recorded priors (METHOD.md): per FG stream, soft =
minmax(s' * c) and hard = sigmoid(k (soft - tau)), with s' oriented by the orientation vote.
``RegionGatedMasks`` multiplies another source's masks by each layer's region (a box or
MASK, feathered over one cell of each grid), so a layer's object stays inside its layout.
``GivenRegionMasks`` (a decomposition) takes a layer's region itself as its masks, with the
same ``masks_for`` / ``final_masks``.
"""

from __future__ import annotations

import logging

import torch

from ..formats import LATENT_CELL
from ..options import BlockKey, ContentTiming, LayerFusionOptions, PriorOrientation, PriorTiming
from .priors import OrientationVote, blend_masks, orient, resize_prior
from .recorder import Maps, PriorRecorder
from .regions import region_at_grid
from .streams import Stream

log = logging.getLogger(__name__)

StreamMasks = dict[Stream, tuple[torch.Tensor, torch.Tensor]]
"""(soft, hard) [N, T] per FG stream, 1 = the layer's object."""


class PriorMasks:
    """Masks from the priors ``recorder`` holds, cached per evaluation and block."""

    needs_priors = True

    def __init__(
        self,
        options: LayerFusionOptions,
        recorder: PriorRecorder,
        structure_block: BlockKey,
        fg_streams: tuple[Stream, ...],
    ) -> None:
        self.options = options
        self.recorder = recorder
        self.structure_block = structure_block
        self.fg_streams = fg_streams
        self.vote_evaluations = options.prior.auto_vote_evaluations
        self.reset()

    def reset(self) -> None:
        """Start of a sampling run: a new orientation vote, no masks."""
        self.vote = OrientationVote(self.options.prior.orientation, self.vote_evaluations)
        self._cache: dict[BlockKey, StreamMasks] = {}
        self._voted = False

    def begin_evaluation(self) -> None:
        self._cache = {}
        self._voted = False

    def settle_vote(self) -> None:
        """Count this run's pending orientation votes (between model calls: it reads them)."""
        self.vote.settle()

    def observe_vote(self) -> None:
        """Let the orientation vote see this evaluation's maps of the back-most FG stream,
        once both its structure and its content prior at the structure block are there."""
        maps, stream = self.recorder.recording, self.fg_streams[0]
        sparsity = maps.sparsity.get(stream)
        content = maps.content.get((stream, self.structure_block))
        if (
            self.vote.decided is None
            and not self._voted
            and self.recorder.active
            and sparsity is not None
            and content is not None
        ):
            grid = maps.content_grid[self.structure_block]
            # Kept on its device: the run settles the vote between model calls (settle_vote).
            self.vote.observe(sparsity, resize_prior(content, grid, maps.sparsity_grid), settle=False)
            self._voted = True

    def _maps_in_use(self) -> tuple[Maps | None, Maps | None]:
        """(structure source, content source) for this evaluation's masks."""
        recorder, prior = self.recorder, self.options.prior
        if prior.timing.reuses_previous:
            if recorder.previous is not None:
                return recorder.previous, recorder.previous
            if prior.timing == PriorTiming.PREVIOUS_ONLY:
                return None, None  # nothing recorded before this evaluation: no blending yet
        content = recorder.recording
        if prior.content_timing == ContentTiming.PREVIOUS and recorder.previous is not None:
            content = recorder.previous
        return recorder.recording, content

    def masks_for(self, block: BlockKey, grid: tuple[int, int]) -> StreamMasks | None:
        """(soft, hard) per FG stream for ``block`` at this evaluation, or None when not
        available (no maps yet, or the orientation is not decided)."""
        cached = self._cache.get(block)
        if cached is None and self.vote.decided is not None:
            structure_maps, content_maps = self._maps_in_use()
            cached = self._masks(structure_maps, content_maps, block, grid, self.vote.decided)
            if cached is not None:
                self._cache[block] = cached
        return cached

    def _masks(
        self,
        structure_maps: Maps | None,
        content_maps: Maps | None,
        block: BlockKey,
        grid: tuple[int, int],
        orientation: PriorOrientation,
    ) -> StreamMasks | None:
        if structure_maps is None or content_maps is None:
            return None
        blend = self.options.blend
        masks = {}
        for stream in self.fg_streams:
            sparsity = structure_maps.sparsity.get(stream)
            content = content_maps.content.get((stream, block))
            if sparsity is None or content is None:
                return None
            structure = orient(resize_prior(sparsity, structure_maps.sparsity_grid, grid), orientation)
            content = resize_prior(content, content_maps.content_grid[block], grid)
            masks[stream] = blend_masks(structure, content, blend.coefficient, blend.threshold)
        return masks

    def final_masks(self) -> tuple[StreamMasks, tuple[int, int]] | None:
        """(masks, grid) at the structure block from the latest recorded maps (the last
        evaluation's), or None when nothing was recorded."""
        self.settle_vote()
        maps = self.recorder.latest
        if maps is None:
            return None
        orientation = self.vote.decided
        if orientation is None:  # AUTO that never decided (e.g. an empty blending window)
            log.warning(
                "LayerFusion: orientation 'auto' was never decided in this run (fewer voting evaluations "
                "than auto_vote_evaluations=%d): nothing was blended; the returned masks use 'dense'",
                self.vote_evaluations,
            )
            orientation = PriorOrientation.DENSE
        masks = self._masks(maps, maps, self.structure_block, maps.sparsity_grid, orientation)
        return None if masks is None else (masks, maps.sparsity_grid)


class _RegionMasks:
    """A mask source built on the priors' source and the layers' regions ([H, W] per FG
    stream that has one), with the regions at each grid cached; run bookkeeping goes to the
    source."""

    needs_priors = True

    def __init__(self, source: PriorMasks, regions: dict[Stream, torch.Tensor]) -> None:
        self.source = source
        self.regions = regions
        self._at_grid: dict[tuple[Stream, tuple[int, int]], torch.Tensor] = {}

    def reset(self) -> None:
        self.source.reset()

    def begin_evaluation(self) -> None:
        self.source.begin_evaluation()

    def observe_vote(self) -> None:
        self.source.observe_vote()

    def settle_vote(self) -> None:
        self.source.settle_vote()


class RegionGatedMasks(_RegionMasks):
    """``source``'s masks, each FG stream's multiplied by its region where it has one."""

    def _gate(self, masks: StreamMasks, grid: tuple[int, int]) -> StreamMasks:
        out = {}
        for stream, (soft, hard) in masks.items():
            region = self.regions.get(stream)
            if region is None:
                out[stream] = (soft, hard)
                continue
            key = (stream, tuple(grid))
            gate = self._at_grid.get(key)
            if gate is None or gate.device != soft.device:
                gate = self._at_grid[key] = region_at_grid(region, grid).to(soft.device)
            out[stream] = (soft * gate.to(soft.dtype), hard * gate.to(hard.dtype))
        return out

    def masks_for(self, block: BlockKey, grid: tuple[int, int]) -> StreamMasks | None:
        masks = self.source.masks_for(block, grid)
        return None if masks is None else self._gate(masks, grid)

    def final_masks(self) -> tuple[StreamMasks, tuple[int, int]] | None:
        final = self.source.final_masks()
        return None if final is None else (self._gate(final[0], final[1]), final[1])


class GivenRegionMasks(_RegionMasks):
    """Decomposition (LAYERS.md 3.3): an FG stream with a region (a box or MASK) takes that
    region itself as its soft and hard mask, area-resampled to each grid without feathering
    (cells wholly inside are 1, wholly outside 0); the other FG streams take ``source``'s
    masks (none blend until the source has them). With a region for every layer no prior is
    needed (``needs_priors``)."""

    def _given(self, stream: Stream, grid: tuple[int, int], like: torch.Tensor | None) -> torch.Tensor:
        key = (stream, tuple(grid))
        mask = self._at_grid.get(key)
        if mask is None:
            mask = self._at_grid[key] = region_at_grid(self.regions[stream], grid, feather=False)
        return mask if like is None else mask.to(like.device)

    def _masks(self, found: StreamMasks | None, grid: tuple[int, int]) -> StreamMasks:
        """Given regions as [N, T] (N of ``found``; [1, T] while the source has nothing)."""
        like = next(iter(found.values()))[0] if found else None
        images = 1 if like is None else like.shape[0]
        out = {}
        for stream in self.source.fg_streams:
            if stream in self.regions:
                mask = self._given(stream, grid, like)[None].expand(images, -1)
                out[stream] = (mask, mask)
            elif found is not None:
                out[stream] = found[stream]
        return out

    def masks_for(self, block: BlockKey, grid: tuple[int, int]) -> StreamMasks | None:
        found = self.source.masks_for(block, grid)
        if found is None and self.needs_priors:
            return None  # a layer without a region still waits for its priors
        return self._masks(found, grid)

    @property
    def needs_priors(self) -> bool:
        """False when every layer has a region: then no prior pass is needed."""
        return len(self.regions) < len(self.source.fg_streams)

    def final_masks(self) -> tuple[StreamMasks, tuple[int, int]] | None:
        final = self.source.final_masks()
        if final is None:
            if self.needs_priors:
                return None
            height, width = next(iter(self.regions.values())).shape
            grid = (
                height // LATENT_CELL,
                width // LATENT_CELL,
            )  # every layer given: the regions at latent size
            return self._masks(None, grid), grid
        masks, grid = final
        return self._masks(masks, grid), grid
