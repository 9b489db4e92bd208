"""The per-run LayerFusion controller: what each attention hook does, in pure torch.

The host adapter (comfy_runtime) turns ComfyUI's hook arguments into an ``AttentionCall``
and calls ``self_attention`` / ``cross_attention`` (replace hooks) and ``blend_output``
(output patches). Bookkeeping - which maps were recorded in which evaluation, the
orientation vote, the mask cache - lives in ``RunState``, reset at the start of every
sampling run; the policy lives in the controller's methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from .architectures.sdxl import UNetLayout
from .method.blend import AttentionFn, blend_attention, shared_attention
from .method.priors import (
    OrientationVote,
    blend_masks,
    content_prior,
    minmax,
    orient,
    resize_prior,
    sparsity_score,
)
from .method.streams import CallLayout, Chunk, Stream, StreamRole, StreamSet, merge, split
from .options import (
    BlendMode,
    BlockKey,
    ContentTiming,
    LayerFusionOptions,
    PriorOrientation,
    PriorTiming,
    SharingMode,
    parse_layer_spec,
)

log = logging.getLogger(__name__)

FG = Stream(StreamRole.FG)
BG = Stream(StreamRole.BG)
BLENDED = Stream(StreamRole.BLENDED)


class Phase(str, Enum):
    PRIOR = "prior"  # the FG-only conditional prior pass
    MAIN = "main"  # the sampler's own model call


@dataclass
class AttentionCall:
    """One attention layer invocation, as the host sees it."""

    phase: Phase
    block: BlockKey
    layout: CallLayout
    heads: int
    grid: tuple[int, int]  # (h, w) of the layer's token grid
    call_through: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    attention: AttentionFn  # plain attention(q, k, v, heads, mask=None) for our own calls


@dataclass
class Maps:
    """Maps recorded in one evaluation: normalised sparsity at the structure layer and
    the content prior of every block, per image ([N, T] each)."""

    sparsity: torch.Tensor | None = None
    sparsity_grid: tuple[int, int] | None = None
    content: dict[BlockKey, torch.Tensor] = field(default_factory=dict)
    content_grid: dict[BlockKey, tuple[int, int]] = field(default_factory=dict)


@dataclass
class RunState:
    evaluation: int = -1
    active: bool = False  # blending/sharing window contains this evaluation
    recording: Maps = field(default_factory=Maps)
    previous: Maps | None = None
    masks: dict[BlockKey, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class LayerFusionController:
    def __init__(
        self,
        options: LayerFusionOptions,
        unet: UNetLayout,
        stream_set: StreamSet,
        eos_index: torch.Tensor | None,
    ) -> None:
        self.options = options
        self.unet = unet
        self.stream_set = stream_set
        self.eos_index = eos_index  # [N] global EOS index of each image's FG prompt, or None
        layer = options.prior.structure_layer
        self.structure_block = unet.last_block.key if layer == "last" else _block_from_spec(layer)
        if self.structure_block not in unet.by_key:
            raise ValueError(_not_a_block("structure_layer", layer, unet))
        blend = options.blend
        _, layer_blocks = parse_layer_spec(blend.layers.spec)
        absent = sorted(".".join(map(str, key)) for key in layer_blocks if key not in unet.by_key)
        if absent:
            raise ValueError(_not_a_block("layers", ", ".join(absent), unet))
        self.generative = blend.mode == BlendMode.GENERATIVE and stream_set.blended
        self.blend_blocks = frozenset(b.key for b in unet.blocks if blend.layers.contains(b.key))
        self.content_blocks = self.blend_blocks | {self.structure_block}
        self.sharing = blend.sharing if self.generative else SharingMode.OFF
        self.vote_evaluations = options.prior.auto_vote_evaluations
        self.reset()

    def plan_evaluations(self, evaluations: int) -> None:
        """The run has at least ``evaluations`` model evaluations inside the blending window:
        an ``auto`` vote needing more could never decide (blending would silently stay off),
        so it is shortened to that many, with a warning."""
        needed = self.options.prior.auto_vote_evaluations
        if self.options.prior.orientation != PriorOrientation.AUTO or not 0 < evaluations < needed:
            return
        log.warning(
            "LayerFusion: auto_vote_evaluations is %d but the blending window of this run has only %d "
            "evaluation(s); the orientation vote uses %d so that blending can start",
            needed,
            evaluations,
            evaluations,
        )
        self.vote_evaluations = evaluations
        self.reset()

    # -- bookkeeping -------------------------------------------------------------------
    def reset(self) -> None:
        """Start of a sampling run: forget every map, vote and mask."""
        self.state = RunState()
        self.vote = OrientationVote(self.options.prior.orientation, self.vote_evaluations)

    def begin_evaluation(self, active: bool) -> None:
        """Start of one model evaluation; ``active`` = inside the blending step range."""
        state = self.state
        if state.recording.sparsity is not None:
            state.previous = state.recording
        state.recording = Maps()
        state.masks = {}
        state.evaluation += 1
        state.active = active

    @property
    def uses_prior_pass(self) -> bool:
        return self.generative and (
            self.options.prior.timing == PriorTiming.PRIOR_PASS or self.state.previous is None
        )

    @property
    def records_in_main(self) -> bool:
        """Maps come from the main call's FG rows (previous timing, or alpha mode)."""
        return not self.generative or self.options.prior.timing == PriorTiming.PREVIOUS

    def _maps_in_use(self) -> tuple[Maps | None, Maps | None]:
        """(structure source, content source) for this evaluation's masks."""
        state = self.state
        if self.options.prior.timing == PriorTiming.PREVIOUS and state.previous is not None:
            return state.previous, state.previous
        content = state.recording
        if self.options.prior.content_timing == ContentTiming.PREVIOUS and state.previous is not None:
            content = state.previous
        return state.recording, content

    def masks_for(self, block: BlockKey, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(soft, hard) [N, T] for ``block`` at this evaluation, or None when not available."""
        cached = self.state.masks.get(block)
        if cached is None and self.vote.decided is not None:
            structure_maps, content_maps = self._maps_in_use()
            cached = self._masks(structure_maps, content_maps, block, grid, self.vote.decided)
            if cached is not None:
                self.state.masks[block] = cached
        return cached

    def _masks(
        self,
        structure_maps: Maps | None,
        content_maps: Maps | None,
        block: BlockKey,
        grid: tuple[int, int],
        orientation: PriorOrientation,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if structure_maps is None or structure_maps.sparsity is None or content_maps is None:
            return None
        content = content_maps.content.get(block)
        if content is None:
            return None
        structure = orient(
            resize_prior(structure_maps.sparsity, structure_maps.sparsity_grid, grid), orientation
        )
        content = resize_prior(content, content_maps.content_grid[block], grid)
        blend = self.options.blend
        return blend_masks(structure, content, blend.coefficient, blend.threshold)

    def final_masks(self) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None:
        """(soft, hard, grid) at the structure block from the latest recorded maps (the
        last evaluation's), or None when nothing was recorded."""
        state = self.state
        maps = state.recording if state.recording.sparsity is not None else state.previous
        if maps is None or maps.sparsity is None:
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
        return None if masks is None else (*masks, maps.sparsity_grid)

    # -- recording ---------------------------------------------------------------------
    def _recording_rows(self, call: AttentionCall, device: torch.device) -> torch.Tensor | None:
        """Rows whose attention feeds the priors in this call, one per image in image order:
        the FG positive rows (all rows of a prior pass; of a main call only when maps are
        recorded there), or None."""
        if call.phase != Phase.PRIOR and not (self.records_in_main and Chunk.POSITIVE in call.layout.chunks):
            return None
        return call.layout.index_tensor(FG, device, Chunk.POSITIVE)

    def _record_sparsity(
        self, call: AttentionCall, rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> None:
        score = sparsity_score(
            q.index_select(0, rows), k.index_select(0, rows), call.heads,
            self.options.prior.chunk_size, self.options.prior.formula,
        )  # fmt: skip
        self.state.recording.sparsity = minmax(score)
        self.state.recording.sparsity_grid = tuple(call.grid)
        self._observe_vote()

    def _record_content(
        self, call: AttentionCall, rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> None:
        eos = None if self.eos_index is None else self.eos_index.to(q.device)
        c = content_prior(q.index_select(0, rows), k.index_select(0, rows), call.heads, eos)
        self.state.recording.content[call.block] = c
        self.state.recording.content_grid[call.block] = tuple(call.grid)
        if call.block == self.structure_block:
            self._observe_vote()

    def _observe_vote(self) -> None:
        maps = self.state.recording
        content = maps.content.get(self.structure_block)
        if (
            self.vote.decided is None
            and self.state.active
            and maps.sparsity is not None
            and content is not None
        ):
            grid = maps.content_grid[self.structure_block]
            self.vote.observe(maps.sparsity, resize_prior(content, grid, maps.sparsity_grid))

    # -- hooks -------------------------------------------------------------------------
    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        """attn1 replace: record the structure prior where needed, share where enabled."""
        rows = self._recording_rows(call, q.device) if call.block == self.structure_block else None
        if rows is not None:
            self._record_sparsity(call, rows, q, k)
        if call.phase != Phase.MAIN or not self._shares(call):
            return call.call_through(q, k, v)
        masks = self.masks_for(call.block, call.grid)
        if self.sharing == SharingMode.MASKED and masks is None:
            return call.call_through(q, k, v)
        return self._shared_self_attention(q, k, v, call, None if masks is None else masks[1])

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        """attn2 replace: record the content prior; each stream keeps its own prompt."""
        rows = self._recording_rows(call, q.device) if call.block in self.content_blocks else None
        if rows is not None:
            self._record_content(call, rows, q, k)
        return call.call_through(q, k, v)

    def blend_output(self, out: torch.Tensor, call: AttentionCall, attention: str) -> torch.Tensor:
        """attn1/attn2 output patch (after to_out): Eq. 1 and Eq. 2 between FG and BLENDED."""
        if call.phase != Phase.MAIN or not self._blends(call, attention):
            return out
        masks = self.masks_for(call.block, call.grid)
        if masks is None:
            return out
        parts = split(out, call.layout)
        soft, hard = (self._per_row(m, call.layout, FG) for m in masks)
        parts[FG], parts[BLENDED] = blend_attention(parts[FG], parts[BLENDED], soft, hard)
        return merge(parts, call.layout)

    # -- policy helpers ----------------------------------------------------------------
    def wants_self_attention(self, block: BlockKey) -> bool:
        return block == self.structure_block or (
            self.sharing != SharingMode.OFF and block in self.blend_blocks
        )

    def wants_cross_attention(self, block: BlockKey) -> bool:
        return block in self.content_blocks

    def _blends(self, call: AttentionCall, attention: str) -> bool:
        layers = self.options.blend.layers
        wanted = layers.self_attention if attention == "attn1" else layers.cross_attention
        return self.generative and wanted and self.state.active and call.block in self.blend_blocks

    def _shares(self, call: AttentionCall) -> bool:
        return self.sharing != SharingMode.OFF and self.state.active and call.block in self.blend_blocks

    @staticmethod
    def _per_row(mask: torch.Tensor, layout: CallLayout, stream: Stream) -> torch.Tensor:
        """Per-image mask [N, T] -> one row per (chunk, image) of ``stream``: the cond
        masks serve the uncond rows too."""
        return mask.index_select(0, layout.image_tensor(stream, mask.device))

    def _shared_self_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        call: AttentionCall,
        hard: torch.Tensor | None,
    ) -> torch.Tensor:
        layout = call.layout
        qs, ks, vs = split(q, layout), split(k, layout), split(v, layout)
        out = {s: call.call_through(qs[s], ks[s], vs[s]) for s in qs if s.role == StreamRole.FG}
        hard_rows = None if hard is None else self._per_row(hard, layout, BG)
        out[BLENDED], out[BG] = shared_attention(
            qs[BLENDED], ks[BLENDED], vs[BLENDED], qs[BG], ks[BG], vs[BG], call.heads, self.sharing,
            hard_rows, self.options.blend.sharing_epsilon, call.attention,
        )  # fmt: skip
        return merge(out, layout)


def _not_a_block(name: str, value: str, unet: UNetLayout) -> str:
    return (
        f"{name}: {value!r} is not a transformer block of {unet.name} "
        f"(last is {'.'.join(map(str, unet.last_block.key))})"
    )


def _block_from_spec(spec: str) -> BlockKey:
    name, block_id, index = spec.split(".")
    return (name, int(block_id), int(index))
