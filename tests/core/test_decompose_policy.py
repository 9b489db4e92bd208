"""The decomposition's attention policy without ComfyUI (LAYERS.md 3.3): a layer's box or MASK is
its mask, nothing blends into BLENDED (Eq. 2 only), and BG's shared attention never reaches
BLENDED's keys inside the mask while it does outside."""

import torch

from layerfusion_core.architectures.sdxl import UNetShape, build_layout
from layerfusion_core.method.blend import blend_into_layers, sdpa_attention, visibilities
from layerfusion_core.method.controller import AttentionCall, LayerFusionController, Phase
from layerfusion_core.method.run_plan import RunPolicy
from layerfusion_core.method.streams import CallLayout, Stream, StreamRole, StreamSet, merge, split
from layerfusion_core.options import LayerFusionOptions

UNET = build_layout(
    "tiny", UNetShape(8, (1, 2), (1, 1), (1, 1), (1, 1, 1, 1), 1, context_dim=8, num_head_channels=4)
)
LAST = UNET.last_block.key
GRID = (4, 4)
FG, BG, BL = Stream(StreamRole.FG), Stream(StreamRole.BG), Stream(StreamRole.BLENDED)
SET = StreamSet()


def region() -> torch.Tensor:
    """Image-size region (16 x 16 pixels, the 4 x 4 grid's cells 4 px each): the left half."""
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1
    return mask


def inside_tokens() -> torch.Tensor:
    return (torch.arange(16) % 4) < 2  # grid columns 0 and 1


def controller(decompose: bool = True) -> LayerFusionController:
    ctrl = LayerFusionController(
        LayerFusionOptions(),
        UNET,
        SET,
        None,
        {FG: region()},
        policy=RunPolicy.decomposition() if decompose else RunPolicy.text(),
    )
    ctrl.begin_evaluation(active=True)
    return ctrl


def call(layout: CallLayout) -> AttentionCall:
    return AttentionCall(
        Phase.MAIN, LAST, layout, 2, GRID, lambda q, k, v: sdpa_attention(q, k, v, 2), sdpa_attention
    )


def qkv(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 16, 8, generator=g) for _ in range(3)]


def test_the_given_region_is_the_mask_without_waiting_for_priors():
    ctrl = controller()
    masks = ctrl.masks.masks_for(LAST, GRID)  # no prior recorded yet
    soft, hard = masks[FG]
    expected = inside_tokens().float()[None]
    assert torch.equal(soft, expected) and torch.equal(hard, expected)


def test_nothing_blends_into_blended_and_the_layer_takes_blended_inside_its_mask():
    ctrl = controller()
    layout = CallLayout.for_call(SET, [0], 3)
    out = torch.randn(3, 16, 8)
    blended = split(ctrl.blend_output(out.clone(), call(layout), "attn1"), layout)
    before = split(out, layout)
    assert torch.equal(blended[BL], before[BL]) and torch.equal(blended[BG], before[BG])
    inside = inside_tokens()
    assert torch.equal(blended[FG][:, inside], before[BL][:, inside])
    assert torch.equal(blended[FG][:, ~inside], before[FG][:, ~inside])
    # A text run with the same region gates the priors instead, and blends into BLENDED.
    text = controller(decompose=False)
    assert text.masks.masks_for(LAST, GRID) is None  # it waits for priors


def test_bg_never_attends_to_blended_keys_inside_the_mask():
    ctrl = controller()
    layout = CallLayout.for_call(SET, [0], 3)
    q, k, v = qkv(0)
    base = split(ctrl.self_attention(q, k, v, call(layout)), layout)
    inside = inside_tokens()

    def changed(where: torch.Tensor) -> dict:
        parts = {name: split(t, layout) for name, t in (("k", k), ("v", v))}
        for name in ("k", "v"):
            parts[name][BL] = parts[name][BL].clone()
            parts[name][BL][:, where] += 5.0
        k2, v2 = merge(parts["k"], layout), merge(parts["v"], layout)
        return split(ctrl.self_attention(q, k2, v2, call(layout)), layout)

    # BLENDED's keys and values inside the mask changed: BG's output stays (a decomposition's
    # given mask excludes those keys outright); BLENDED's own output moves.
    inside_changed = changed(inside)
    assert torch.equal(inside_changed[BG], base[BG])
    assert (inside_changed[BL] - base[BL]).abs().max() > 0.1
    # Outside the mask BG's keys include BLENDED's.
    assert (changed(~inside)[BG] - base[BG]).abs().max() > 0.1
    # Reference: BG over its own keys and BLENDED's outside the mask only.
    qs, ks, vs = split(q, layout), split(k, layout), split(v, layout)
    keys = torch.cat((ks[BL][:, ~inside], ks[BG]), dim=1)
    values = torch.cat((vs[BL][:, ~inside], vs[BG]), dim=1)
    torch.testing.assert_close(base[BG], sdpa_attention(qs[BG], keys, values, 2), atol=1e-6, rtol=1e-5)


def test_eq2_alone_uses_hard_visibilities():
    g = torch.Generator().manual_seed(3)
    a_fgs = [torch.randn(1, 4, 2, generator=g) for _ in range(2)]
    a_blend = torch.randn(1, 4, 2, generator=g)
    hards = [torch.tensor([[1.0, 1.0, 0.0, 0.5]]), torch.tensor([[0.0, 1.0, 0.0, 0.5]])]
    out = blend_into_layers(a_fgs, a_blend, hards)
    vis = visibilities(hards)
    for a_fg, h, o in zip(a_fgs, vis, out, strict=True):
        torch.testing.assert_close(o, a_fg * (1 - h[..., None]) + a_blend * h[..., None])
    assert torch.equal(out[0][:, 1], a_fgs[0][:, 1])  # covered by the layer above: its own


def test_given_masks_follow_the_attention_tensors_to_their_device():
    """Before any prior is recorded the given masks live on the CPU: blending and sharing move
    them to the tensors' device (meta here stands in for a GPU)."""
    ctrl = controller()
    layout = CallLayout.for_call(SET, [1, 0], 6)
    out = torch.empty(6, 16, 8, device="meta")
    assert ctrl.blend_output(out, call(layout), "attn1").device.type == "meta"
    q, k, v = (torch.empty(6, 16, 8, device="meta") for _ in range(3))
    assert ctrl.self_attention(q, k, v, call(layout)).device.type == "meta"
