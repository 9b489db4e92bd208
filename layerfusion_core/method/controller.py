"""One run's controller: the recorder (bookkeeping), the mask source and the attention policy,
built from the options for a model's transformer table and a stream set; the object the
host adapter talks to. It decides, per evaluation, whether the prior pass runs; the policy
decides what each hook does."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..architectures.sdxl import UNetLayout
from ..options import (
    BlendMode,
    BlockKey,
    LayerFusionOptions,
    PriorOrientation,
    PriorTiming,
    SharingMode,
    parse_layer_spec,
)
from .attention_policy import AttentionCall, AttentionPolicy, Phase, Scope
from .mask_source import GivenRegionMasks, PriorMasks, RegionGatedMasks, StreamMasks
from .recorder import PriorRecorder
from .run_plan import RunPlan, RunPolicy
from .streams import Stream, StreamSet

__all__ = ["AttentionCall", "LayerFusionController", "Phase"]

log = logging.getLogger(__name__)


class LayerFusionController:
    def __init__(
        self,
        options: LayerFusionOptions,
        unet: UNetLayout,
        stream_set: StreamSet,
        eos_index: Mapping[Stream, torch.Tensor] | None,
        regions: Mapping[Stream, torch.Tensor] | None = None,
        coupled: frozenset[Stream] = frozenset(),
        policy: RunPolicy | None = None,
    ) -> None:
        """``eos_index``: per FG stream, the [N] global EOS index of each image's prompt
        (None: the content prior averages over the prompt's tokens). ``regions``: per FG
        stream with a layout, its region [H, W] at image size; its masks are gated by it (in
        a decomposition, its masks are the region itself). ``coupled``: the streams with a
        region whose cross-attention is coupled early. ``policy``: what the regions and BLENDED
        mean (a decomposition: the regions are the masks, nothing blends into BLENDED; None: a
        text run)."""
        policy = policy or RunPolicy.text()
        self.options = options
        self.unet = unet
        self.stream_set = stream_set
        self.scope = _scope(options, unet, stream_set)
        self.recorder = PriorRecorder()
        self.prior_masks = PriorMasks(
            options, self.recorder, self.scope.structure_block, stream_set.fg_streams
        )
        self.masks = self.prior_masks
        if regions:
            masks_from = GivenRegionMasks if policy.regions_are_masks else RegionGatedMasks
            self.masks = masks_from(self.prior_masks, dict(regions))
        couple = {s: r for s, r in (regions or {}).items() if s in coupled}
        self.policy = AttentionPolicy(
            options,
            stream_set,
            self.scope,
            self.recorder,
            self.masks,
            eos_index,
            couple,
            policy.blend_into_blended,
        )

    @classmethod
    def for_plan(
        cls, plan: RunPlan, unet: UNetLayout, eos_index: Mapping[Stream, torch.Tensor] | None
    ) -> LayerFusionController:
        """The controller of ``plan``'s run on a model of table ``unet``; ``eos_index`` as
        prepared for the run (on its device)."""
        return cls(
            plan.options,
            unet,
            plan.stream_set,
            eos_index,
            plan.regions,
            frozenset(plan.empty_contexts),
            plan.policy,
        )

    # -- the run's shape ------------------------------------------------------------------
    @property
    def generative(self) -> bool:
        return self.scope.generative

    @property
    def sharing(self) -> SharingMode:
        return self.scope.sharing

    @property
    def blend_blocks(self) -> frozenset[BlockKey]:
        return self.scope.blend_blocks

    @property
    def prior_pass_end(self) -> BlockKey:
        """The block whose cross-attention records a prior pass's last map (the structure
        prior comes from a block's self-attention, before its cross-attention): past it, the
        pass computes only its prediction, which is never used."""
        return self.scope.last_content_block

    def plan_evaluations(self, evaluations: int) -> None:
        """The run has at least ``evaluations`` model evaluations inside the blending window.
        An ``auto`` vote of v evaluations blends only from the v-th on: one that would take
        more than half of the window (blending in its last evaluation only, at the lowest
        noise, is as good as none) is shortened to half of it (at least 1), with a warning."""
        needed = self.options.prior.auto_vote_evaluations
        allowed = max(1, evaluations // 2)
        if self.options.prior.orientation != PriorOrientation.AUTO or evaluations <= 0 or needed <= allowed:
            return
        log.warning(
            "LayerFusion: auto_vote_evaluations is %d but the blending window of this run has %d "
            "evaluation(s): the orientation vote uses %d, so that blending covers the rest of the window",
            needed,
            evaluations,
            allowed,
        )
        self.prior_masks.vote_evaluations = allowed
        self.reset()

    # -- per run and per evaluation ---------------------------------------------------------
    def reset(self) -> None:
        """Start of a sampling run: forget every map, vote and mask."""
        self.recorder.reset()
        self.masks.reset()

    def begin_evaluation(self, active: bool, coupled: bool = False) -> None:
        """Start of one model evaluation; ``active`` = inside the blending step range,
        ``coupled`` = inside the layers' attention-couple window."""
        self.masks.settle_vote()  # the previous evaluation's vote, before this one's calls
        self.recorder.begin_evaluation(active, coupled)
        self.masks.begin_evaluation()

    def settle_vote(self) -> None:
        """Count the orientation votes cast in the model calls so far (it reads them back from
        the device): the host calls it between calls, after a prior pass."""
        self.masks.settle_vote()

    @property
    def uses_prior_pass(self) -> bool:
        """This evaluation runs the FG-only prior pass: only where its masks are used (inside
        the blending window), and with previous timing only before any map was recorded."""
        timing = self.options.prior.timing
        if not (self.generative and self.recorder.active) or timing == PriorTiming.PREVIOUS_ONLY:
            return False
        if not self.masks.needs_priors:  # a decomposition with a region for every layer
            return False
        return timing == PriorTiming.PRIOR_PASS or self.recorder.previous is None

    def final_masks(self) -> tuple[StreamMasks, tuple[int, int]] | None:
        """(soft, hard) per FG stream at the structure block, and its grid, from the last
        evaluation's maps; None when nothing was recorded."""
        return self.masks.final_masks()

    # -- hooks (the policy's) ---------------------------------------------------------------
    def wants_self_attention(self, block: BlockKey) -> bool:
        return self.policy.wants_self_attention(block)

    def wants_cross_attention(self, block: BlockKey) -> bool:
        return self.policy.wants_cross_attention(block)

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        return self.policy.self_attention(q, k, v, call)

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
    ) -> torch.Tensor:
        return self.policy.cross_attention(q, k, v, call)

    def blend_output(self, out: torch.Tensor, call: AttentionCall, attention: str) -> torch.Tensor:
        return self.policy.blend_output(out, call, attention)


def _scope(options: LayerFusionOptions, unet: UNetLayout, stream_set: StreamSet) -> Scope:
    """Where the run records, blends and shares; every block named must be the model's."""
    layer = options.prior.structure_layer
    structure_block = unet.last_block.key if layer == "last" else _block_from_spec(layer)
    if structure_block not in unet.by_key:
        raise ValueError(_not_a_block("structure_layer", layer, unet))
    blend = options.blend
    _, layer_blocks = parse_layer_spec(blend.layers.spec)
    absent = sorted(".".join(map(str, key)) for key in layer_blocks if key not in unet.by_key)
    if absent:
        raise ValueError(_not_a_block("layers", ", ".join(absent), unet))
    generative = blend.mode == BlendMode.GENERATIVE and stream_set.blended
    blend_blocks = frozenset(b.key for b in unet.blocks if blend.layers.contains(b.key))
    content_blocks = blend_blocks | {structure_block}
    return Scope(
        structure_block=structure_block,
        blend_blocks=blend_blocks,
        content_blocks=content_blocks,
        last_content_block=next(b.key for b in reversed(unet.blocks) if b.key in content_blocks),
        generative=generative,
        sharing=blend.sharing if generative else SharingMode.OFF,
    )


def _not_a_block(name: str, value: str, unet: UNetLayout) -> str:
    return (
        f"{name}: {value!r} is not a transformer block of {unet.name} "
        f"(last is {'.'.join(map(str, unet.last_block.key))})"
    )


def _block_from_spec(spec: str) -> BlockKey:
    name, block_id, index = spec.split(".")
    return (name, int(block_id), int(index))
