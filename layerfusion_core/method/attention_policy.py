"""What each attention hook does in a run (METHOD.md; LAYERS.md 1 for K FG layers), in pure
torch. The host adapter turns ComfyUI's hook arguments into an ``AttentionCall``; the policy
records priors into the recorder, reads masks from the mask source, blends attention outputs
between the FG streams and BLENDED, and shares self-attention between BLENDED and BG."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import torch

from ..options import BlockKey, LayerFusionOptions, PriorTiming, SharingMode
from .blend import AttentionFn, blend_into_layers, blend_layers, shared_attention, union_mask
from .mask_source import PriorMasks
from .priors import content_prior, minmax, sparsity_score
from .recorder import PriorRecorder
from .regions import region_at_grid
from .streams import CallLayout, Chunk, Stream, StreamRole, StreamSet, merge, split


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
    # Cross-attention only: ``context_keys(stream, like)``, the (keys, values) [1, T, C] of a
    # stream's empty-prompt context at this layer, as the layer's own projections make them,
    # on like's device and dtype (the attention couple); None when the run has no couple.
    context_keys: Callable[[Stream, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Scope:
    """Where a run records, blends and shares (fixed for the run)."""

    structure_block: BlockKey
    blend_blocks: frozenset[BlockKey]
    content_blocks: frozenset[BlockKey]
    last_content_block: BlockKey  # the last of content_blocks in the model's order
    generative: bool
    sharing: SharingMode


class AttentionPolicy:
    def __init__(
        self,
        options: LayerFusionOptions,
        stream_set: StreamSet,
        scope: Scope,
        recorder: PriorRecorder,
        masks: PriorMasks,
        eos_index: Mapping[Stream, torch.Tensor] | None,
        couple_regions: Mapping[Stream, torch.Tensor] | None = None,
        blends_into_blended: bool = True,
    ) -> None:
        self.options = options
        self.stream_set = stream_set
        self.fg_streams = stream_set.fg_streams
        self.blended = Stream(StreamRole.BLENDED)
        self.bg = Stream(StreamRole.BG)
        self.scope = scope
        self.recorder = recorder
        self.masks = masks
        self.eos_index = eos_index  # [N] global EOS index of each image's prompt, per FG stream
        # FG streams drawn inside their region early in the run: region [H, W] at image size
        self.couple_regions = dict(couple_regions or {})
        # Eq. 1 (the layers into BLENDED); off in a decomposition, where BLENDED is pinned
        self.blends_into_blended = blends_into_blended
        # A decomposition's given masks exclude BLENDED's keys from BG's attention outright
        self.sharing_epsilon = options.blend.sharing_epsilon if blends_into_blended else 0.0
        self._couple_gates: dict[tuple, torch.Tensor] = {}

    # -- what runs where ----------------------------------------------------------------
    @property
    def records_in_main(self) -> bool:
        """Maps come from the main call's FG rows: previous timing, alpha mode, or outside
        the blending window (there nothing blends, so the FG rows are the FG streams alone)."""
        timing: PriorTiming = self.options.prior.timing
        return not self.scope.generative or timing.reuses_previous or not self.recorder.active

    def wants_self_attention(self, block: BlockKey) -> bool:
        scope = self.scope
        return block == scope.structure_block or (
            scope.sharing != SharingMode.OFF and block in scope.blend_blocks
        )

    def wants_cross_attention(self, block: BlockKey) -> bool:
        return block in self.scope.content_blocks

    def _blends(self, call: AttentionCall, attention: str) -> bool:
        layers = self.options.blend.layers
        wanted = layers.self_attention if attention == "attn1" else layers.cross_attention
        scope = self.scope
        return scope.generative and wanted and self.recorder.active and call.block in scope.blend_blocks

    def _shares(self, call: AttentionCall) -> bool:
        scope = self.scope
        return scope.sharing != SharingMode.OFF and self.recorder.active and call.block in scope.blend_blocks

    # -- recording ----------------------------------------------------------------------
    def _records(self, call: AttentionCall) -> bool:
        """This call's attention feeds the priors: a prior pass, or a main call with a
        positive chunk when maps are recorded there."""
        return call.phase == Phase.PRIOR or (self.records_in_main and Chunk.POSITIVE in call.layout.chunks)

    @staticmethod
    def _recording_rows(call: AttentionCall, stream: Stream, x: torch.Tensor) -> torch.Tensor:
        """The positive rows of ``stream`` in x [B, T, C], one per image in image order (a view)."""
        return call.layout.view_of(x, stream, Chunk.POSITIVE)

    def _record_sparsity(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor) -> None:
        if not self._records(call):
            return
        prior = self.options.prior
        for stream in self.fg_streams:
            score = sparsity_score(
                self._recording_rows(call, stream, q),
                self._recording_rows(call, stream, k),
                call.heads,
                prior.chunk_size,
                prior.formula,
            )
            self.recorder.record_sparsity(stream, minmax(score), call.grid)
        self.masks.observe_vote()

    def _record_content(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor) -> None:
        if not self._records(call):
            return
        for stream in self.fg_streams:
            # On the run's device and range-checked once, when the run was prepared.
            eos = None if self.eos_index is None else self.eos_index.get(stream)
            q_rows, k_rows = self._recording_rows(call, stream, q), self._recording_rows(call, stream, k)
            c = content_prior(q_rows, k_rows, call.heads, eos, check_range=False)
            self.recorder.record_content(stream, call.block, c, call.grid)
        if call.block == self.scope.structure_block:
            self.masks.observe_vote()

    # -- hooks --------------------------------------------------------------------------
    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        """attn1 replace: record the structure prior where needed, share where enabled."""
        if call.block == self.scope.structure_block:
            self._record_sparsity(call, q, k)
        if call.phase != Phase.MAIN or not self._shares(call):
            return call.call_through(q, k, v)
        masks = self.masks.masks_for(call.block, call.grid)
        if self.scope.sharing == SharingMode.MASKED and masks is None:
            return call.call_through(q, k, v)
        hard = None if masks is None else union_mask([masks[s][1] for s in self.fg_streams])
        return self._shared_self_attention(q, k, v, call, hard)

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        """attn2 replace: record the content prior; each stream keeps its own prompt, but a
        coupled FG stream sees the empty prompt outside its region while the couple lasts."""
        if call.block in self.scope.content_blocks:
            self._record_content(call, q, k)
        out = call.call_through(q, k, v)
        if self.couple_regions and self.recorder.coupled and call.context_keys is not None:
            out = self._couple(q, out, call)
        return out

    def _couple(self, q: torch.Tensor, out: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        """In each coupled stream's rows: the prompt's attention inside the region, the empty
        prompt's outside, mixed by the region at this grid (feathered over one cell)."""
        parts = split(out, call.layout)
        coupled = False
        for stream, region in self.couple_regions.items():
            if not call.layout.has_stream(stream):
                continue
            coupled = True
            k_empty, v_empty = call.context_keys(stream, q)
            q_rows = call.layout.view_of(q, stream)
            count = q_rows.shape[0]
            empty = call.attention(
                q_rows, k_empty.expand(count, -1, -1), v_empty.expand(count, -1, -1), call.heads
            )
            key = (stream, call.grid, q.device, q.dtype)
            gate = self._couple_gates.get(key)
            if gate is None:
                gate = self._couple_gates[key] = region_at_grid(region, call.grid).to(q.device, q.dtype)[
                    None, :, None
                ]
            parts[stream] = torch.lerp(empty, parts[stream], gate)
        return merge(parts, call.layout) if coupled else out

    def blend_output(self, out: torch.Tensor, call: AttentionCall, attention: str) -> torch.Tensor:
        """attn1/attn2 output patch (after to_out): Eq. 1 and Eq. 2 between the FG streams and
        BLENDED."""
        if call.phase != Phase.MAIN or not self._blends(call, attention):
            return out
        masks = self.masks.masks_for(call.block, call.grid)
        if masks is None:
            return out
        layout, fgs = call.layout, self.fg_streams
        parts = split(out, layout)
        softs = [self._per_row(masks[s][0], layout, s, out.device) for s in fgs]
        hards = [self._per_row(masks[s][1], layout, s, out.device) for s in fgs]
        if self.blends_into_blended:
            new_fgs, parts[self.blended] = blend_layers(
                [parts[s] for s in fgs], parts[self.blended], softs, hards
            )
        else:  # decomposition: BLENDED is the image, read-only; only Eq. 2 into the layers
            new_fgs = blend_into_layers([parts[s] for s in fgs], parts[self.blended], hards)
        parts.update(zip(fgs, new_fgs, strict=True))
        return merge(parts, layout)

    @staticmethod
    def _per_row(
        mask: torch.Tensor, layout: CallLayout, stream: Stream, device: torch.device
    ) -> torch.Tensor:
        """Per-image mask [N, T] -> one row per (chunk, image) of ``stream``, on ``device``: the
        cond masks serve the uncond rows too; a mask [1, T] serves every image."""
        mask = mask.to(device)
        images = layout.image_tensor(stream, device)
        return mask.index_select(0, images if mask.shape[0] > 1 else torch.zeros_like(images))

    def _shared_self_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        call: AttentionCall,
        hard: torch.Tensor | None,
    ) -> torch.Tensor:
        layout, blended, bg = call.layout, self.blended, self.bg
        qs, ks, vs = split(q, layout), split(k, layout), split(v, layout)
        # Another pack's replace may expect whole tensors, as it gets them outside our calls.
        out = {
            s: call.call_through(qs[s].contiguous(), ks[s].contiguous(), vs[s].contiguous())
            for s in qs
            if s.role == StreamRole.FG
        }
        hard_rows = None if hard is None else self._per_row(hard, layout, bg, q.device)
        out[blended], out[bg] = shared_attention(
            (qs[blended], ks[blended], vs[blended]), (qs[bg], ks[bg], vs[bg]), call.heads, self.scope.sharing,
            hard_rows, self.sharing_epsilon, call.attention,
        )  # fmt: skip
        return merge(out, layout)
