"""The run controller without ComfyUI (method/controller.py and its recorder, mask source and
attention policy): what the hooks record, when they blend and share."""

import torch

from layerfusion_core.architectures.sdxl import UNetShape, build_layout
from layerfusion_core.method.blend import sdpa_attention
from layerfusion_core.method.controller import AttentionCall, LayerFusionController, Phase
from layerfusion_core.method.streams import CallLayout, Stream, StreamRole, StreamSet, split
from layerfusion_core.options import (
    BlendMode,
    BlendOptions,
    LayerFusionOptions,
    PriorOptions,
    PriorTiming,
    SharingMode,
)

UNET = build_layout(
    "tiny", UNetShape(8, (1, 2), (1, 1), (1, 1), (1, 1, 1, 1), 1, context_dim=8, num_head_channels=4)
)
LAST = UNET.last_block.key
GRID = (4, 4)
FG, BG, BL = Stream(StreamRole.FG), Stream(StreamRole.BG), Stream(StreamRole.BLENDED)


def call(phase, block, layout, through=None):
    def plain(q, k, v):
        return sdpa_attention(q, k, v, 2)

    return AttentionCall(phase, block, layout, 2, GRID, through or plain, sdpa_attention)


def qkv(batch, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, 8, generator=g) for _ in range(3)]


def prior_pass(ctrl, images=1):
    layout = CallLayout.for_call(StreamSet(), [0], images, fg_only=True)
    q, k, v = qkv(images)
    ctrl.self_attention(q, k, v, call(Phase.PRIOR, LAST, layout))
    for block in sorted(ctrl.scope.content_blocks):
        qt, kt, vt = qkv(images, seed=1)
        ctrl.cross_attention(qt, kt[:, :8], vt[:, :8], call(Phase.PRIOR, block, layout))


def test_prior_pass_records_maps_and_main_call_blends_only_fg_and_blended():
    ctrl = LayerFusionController(
        LayerFusionOptions(blend=BlendOptions(sharing="off")), UNET, StreamSet(), {FG: torch.tensor([3])}
    )
    ctrl.begin_evaluation(active=True)
    assert ctrl.uses_prior_pass
    prior_pass(ctrl)
    assert ctrl.recorder.recording.sparsity[FG].shape == (1, 16)
    assert {block for _, block in ctrl.recorder.recording.content} == ctrl.scope.content_blocks
    layout = CallLayout.for_call(StreamSet(), [1, 0], 6)
    out = torch.randn(6, 16, 8)
    blended = ctrl.blend_output(out.clone(), call(Phase.MAIN, LAST, layout), "attn1")
    before, after = split(out, layout), split(blended, layout)
    assert torch.equal(before[BG], after[BG])
    assert not torch.equal(before[FG], after[FG]) and not torch.equal(before[BL], after[BL])
    # the prior pass itself never blends
    assert torch.equal(ctrl.blend_output(out, call(Phase.PRIOR, LAST, layout), "attn1"), out)


def test_outside_the_window_nothing_blends_or_shares():
    ctrl = LayerFusionController(LayerFusionOptions(), UNET, StreamSet(), None)
    ctrl.begin_evaluation(active=False)
    prior_pass(ctrl)
    layout = CallLayout.for_call(StreamSet(), [0], 3)
    out = torch.randn(3, 16, 8)
    assert torch.equal(ctrl.blend_output(out, call(Phase.MAIN, LAST, layout), "attn1"), out)
    q, k, v = qkv(3)
    torch.testing.assert_close(
        ctrl.self_attention(q, k, v, call(Phase.MAIN, LAST, layout)), sdpa_attention(q, k, v, 2)
    )


def test_masked_sharing_runs_fg_rows_through_the_other_attention():
    ctrl = LayerFusionController(LayerFusionOptions(), UNET, StreamSet(), None)
    ctrl.begin_evaluation(active=True)
    prior_pass(ctrl)
    seen = []

    def other(q, k, v):
        seen.append(q.shape[0])
        return sdpa_attention(q, k, v, 2)

    layout = CallLayout.for_call(StreamSet(), [1, 0], 6)
    q, k, v = qkv(6)
    out = ctrl.self_attention(q, k, v, call(Phase.MAIN, LAST, layout, other))
    assert seen == [2]  # the FG rows of both chunks; BG/BLENDED use shared attention
    plain = split(sdpa_attention(q, k, v, 2), layout)
    assert torch.equal(split(out, layout)[FG], plain[FG])
    assert not torch.allclose(split(out, layout)[BL], plain[BL])


def test_previous_timing_uses_the_last_evaluations_maps_and_one_prior_pass():
    options = LayerFusionOptions(prior=PriorOptions(timing=PriorTiming.PREVIOUS))
    ctrl = LayerFusionController(options, UNET, StreamSet(), None)
    ctrl.begin_evaluation(active=True)
    assert ctrl.uses_prior_pass  # nothing recorded yet
    prior_pass(ctrl)
    layout = CallLayout.for_call(StreamSet(), [0], 3)
    q, k, v = qkv(3, seed=5)
    ctrl.self_attention(q, k, v, call(Phase.MAIN, LAST, layout))  # records from the FG row
    ctrl.begin_evaluation(active=True)
    assert not ctrl.uses_prior_pass and ctrl.recorder.previous.has_structure


def test_alpha_mode_records_in_main_and_never_blends():
    options = LayerFusionOptions(blend=BlendOptions(mode=BlendMode.ALPHA))
    ctrl = LayerFusionController(options, UNET, StreamSet(blended=False), None)
    ctrl.begin_evaluation(active=True)
    assert not ctrl.uses_prior_pass and ctrl.sharing == SharingMode.OFF
    layout = CallLayout.for_call(StreamSet(blended=False), [0], 2)
    q, k, v = qkv(2)
    ctrl.self_attention(q, k, v, call(Phase.MAIN, LAST, layout))
    for block in ctrl.scope.content_blocks:
        ctrl.cross_attention(q, k[:, :8], v[:, :8], call(Phase.MAIN, block, layout))
    masks, grid = ctrl.final_masks()
    assert set(masks) == {FG}
    soft, hard = masks[FG]
    assert soft.shape == hard.shape == (1, 16) and grid == GRID and soft.max() == 1


def main_call(ctrl, seed=5):
    """One main call (cfg 1, one image): the structure layer and every content block."""
    layout = CallLayout.for_call(StreamSet(), [0], 3)
    q, k, v = qkv(3, seed=seed)
    ctrl.self_attention(q, k, v, call(Phase.MAIN, LAST, layout))
    for block in sorted(ctrl.scope.content_blocks):
        qt, kt, vt = qkv(3, seed=seed + 1)
        ctrl.cross_attention(qt, kt[:, :8], vt[:, :8], call(Phase.MAIN, block, layout))
    return layout


def test_previous_only_never_runs_a_prior_pass_and_blends_from_the_second_evaluation():
    options = LayerFusionOptions(prior=PriorOptions(timing=PriorTiming.PREVIOUS_ONLY))
    ctrl = LayerFusionController(options, UNET, StreamSet(), None)
    ctrl.begin_evaluation(active=True)
    assert not ctrl.uses_prior_pass and ctrl.policy.records_in_main
    layout = main_call(ctrl)
    assert ctrl.masks.masks_for(LAST, GRID) is None  # nothing from before this evaluation
    out = torch.randn(3, 16, 8)
    assert torch.equal(ctrl.blend_output(out, call(Phase.MAIN, LAST, layout), "attn1"), out)
    ctrl.begin_evaluation(active=True)
    assert not ctrl.uses_prior_pass and ctrl.recorder.previous.has_structure
    assert not torch.equal(ctrl.blend_output(out, call(Phase.MAIN, LAST, layout), "attn1"), out)


def test_outside_the_window_no_prior_pass_runs_and_the_main_call_records():
    ctrl = LayerFusionController(LayerFusionOptions(), UNET, StreamSet(), None)
    ctrl.begin_evaluation(active=False)
    assert not ctrl.uses_prior_pass and ctrl.policy.records_in_main
    main_call(ctrl)
    assert (
        ctrl.recorder.recording.has_structure
        and {block for _, block in ctrl.recorder.recording.content} == ctrl.scope.content_blocks
    )
    assert ctrl.final_masks() is not None
    ctrl.begin_evaluation(active=True)
    assert ctrl.uses_prior_pass and not ctrl.policy.records_in_main
