"""The attention couple of a boxed layer (LAYERS.md 1b) without ComfyUI: inside its region a
layer's cross-attention is its prompt's, outside it is the empty prompt's, only in that
layer's rows and only while the couple lasts."""

import torch

from layerfusion_core.architectures.sdxl import UNetShape, build_layout
from layerfusion_core.method.blend import sdpa_attention
from layerfusion_core.method.controller import AttentionCall, LayerFusionController, Phase
from layerfusion_core.method.streams import CallLayout, Stream, StreamRole, StreamSet, split
from layerfusion_core.options import BlendOptions, LayerFusionOptions, LayerSet, SharingMode

UNET = build_layout(
    "tiny", UNetShape(8, (1, 2), (1, 1), (1, 1), (1, 1, 1, 1), 1, context_dim=8, num_head_channels=4)
)
GRID = (8, 8)
SETS = StreamSet(foregrounds=2)
FG0, FG1 = SETS.fg_streams
NO_BLEND = LayerFusionOptions(
    blend=BlendOptions(layers=LayerSet(self_attention=False, cross_attention=False), sharing=SharingMode.OFF)
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def left_half(height=64, width=64):
    region = torch.zeros(height, width)
    region[:, : width // 2] = 1.0
    return region


def test_couple_mixes_prompt_and_empty_attention_by_the_region_in_the_layers_rows_only():
    k_empty, v_empty = rand(1, 5, 8, seed=10), rand(1, 5, 8, seed=11)
    ctrl = LayerFusionController(NO_BLEND, UNET, SETS, None, {FG1: left_half()}, frozenset({FG1}))
    layout = CallLayout.for_call(SETS, [1, 0], 8)
    q, k, v = rand(8, 64, 8, seed=1), rand(8, 7, 8, seed=2), rand(8, 7, 8, seed=3)
    block = UNET.blocks[0].key

    def call():
        return AttentionCall(
            Phase.MAIN, block, layout, 2, GRID, lambda q_, k_, v_: sdpa_attention(q_, k_, v_, 2), sdpa_attention,
            context_keys=lambda stream, like: (k_empty, v_empty),
        )  # fmt: skip

    plain = split(sdpa_attention(q, k, v, 2), layout)
    ctrl.begin_evaluation(active=True, coupled=True)
    coupled = split(ctrl.cross_attention(q, k, v, call()), layout)
    rows = split(q, layout)[FG1]
    empty = sdpa_attention(rows, k_empty.expand(2, -1, -1), v_empty.expand(2, -1, -1), 2)
    columns = torch.arange(64) % 8
    far_left, far_right = columns <= 2, columns >= 5  # more than one cell from the region's edge
    torch.testing.assert_close(coupled[FG1][:, far_left], plain[FG1][:, far_left])
    torch.testing.assert_close(coupled[FG1][:, far_right], empty[:, far_right])
    for stream in (FG0, Stream(StreamRole.BG), Stream(StreamRole.BLENDED)):
        assert torch.equal(coupled[stream], plain[stream])
    ctrl.begin_evaluation(active=True, coupled=False)  # after the couple's window
    assert torch.equal(ctrl.cross_attention(q, k, v, call()), sdpa_attention(q, k, v, 2))
