"""Eq. 1 / Eq. 2 for K FG layers (LAYERS.md 1) against a float64 reference, and the masks'
invariants: visibilities sum to at most 1, an occluded layer gets nothing of BLENDED where
the layer above covers it, and K = 1 is the paper's blend exactly."""

import torch

from layerfusion_core.method.blend import (
    blend_attention,
    blend_layers,
    shared_attention,
    suppression_bias,
    union_mask,
    visibilities,
)
from layerfusion_core.options import SharingMode


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def masks(k, b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, t, generator=g) for _ in range(k)]


def reference(a_fgs, a_blend, softs, hards):
    """LAYERS.md 1 in float64, written out layer by layer."""
    k = len(a_fgs)
    v = [
        softs[i].double()
        * torch.prod(
            torch.stack(
                [1 - softs[f].double() for f in range(i + 1, k)] or [torch.ones_like(softs[0].double())]
            ),
            0,
        )
        for i in range(k)
    ]
    h = [
        hards[i].double()
        * torch.prod(
            torch.stack(
                [1 - hards[f].double() for f in range(i + 1, k)] or [torch.ones_like(hards[0].double())]
            ),
            0,
        )
        for i in range(k)
    ]
    blend = (1 - sum(v))[..., None] * a_blend.double()
    for vi, a in zip(v, a_fgs, strict=True):
        blend = blend + vi[..., None] * a.double()
    fgs = [hi[..., None] * blend + (1 - hi[..., None]) * a.double() for hi, a in zip(h, a_fgs, strict=True)]
    return fgs, blend


def test_k_layers_match_the_float64_equations():
    for k in (2, 3, 4):
        a_fgs = [rand(2, 12, 6, seed=10 + i) for i in range(k)]
        a_blend = rand(2, 12, 6, seed=1)
        softs, hards = masks(k, seed=2), masks(k, seed=3)
        fgs, blend = blend_layers(a_fgs, a_blend, softs, hards)
        ref_fgs, ref_blend = reference(a_fgs, a_blend, softs, hards)
        torch.testing.assert_close(blend.double(), ref_blend, atol=1e-5, rtol=0)
        for got, want in zip(fgs, ref_fgs, strict=True):
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_one_layer_is_the_paper_blend_bit_for_bit():
    a_fg, a_blend = rand(2, 12, 6, seed=1), rand(2, 12, 6, seed=2)
    soft, hard = masks(2, seed=4)
    (fg,), blend = blend_layers([a_fg], a_blend, [soft], [hard])
    want_fg, want_blend = blend_attention(a_fg, a_blend, soft, hard)
    assert torch.equal(fg, want_fg) and torch.equal(blend, want_blend)
    assert torch.equal(union_mask([hard]), hard)


def test_visibilities_sum_to_at_most_one_and_the_top_layer_is_whole():
    for k in (1, 2, 4):
        ms = masks(k, seed=k)
        vis = visibilities(ms)
        assert torch.equal(vis[-1], ms[-1])
        total = sum(vis)
        assert total.max() <= 1 + 1e-6 and total.min() >= 0


def test_a_fully_covered_layer_gets_no_blended_attention():
    a_fgs = [rand(1, 8, 4, seed=1), rand(1, 8, 4, seed=2)]
    a_blend = rand(1, 8, 4, seed=3)
    covered = torch.zeros(1, 8)
    covered[:, :4] = 1.0  # FG_1 (on top) covers the first half entirely
    hards = [torch.ones(1, 8), covered]
    softs = [torch.ones(1, 8), covered]
    (fg0, fg1), blend = blend_layers(a_fgs, a_blend, softs, hards)
    torch.testing.assert_close(fg0[:, :4], a_fgs[0][:, :4])  # occluded: keeps its own attention
    torch.testing.assert_close(fg0[:, 4:], blend[:, 4:])  # visible: the harmonised context
    torch.testing.assert_close(blend[:, :4], a_fgs[1][:, :4])  # BLENDED shows the top layer there
    torch.testing.assert_close(fg1[:, :4], blend[:, :4])


def test_bg_never_attends_to_blended_keys_inside_any_layers_hard_mask():
    heads, t = 2, 8
    q_bl, k_bl, v_bl, q_bg, k_bg, v_bg = (rand(1, t, 4, seed=s) for s in range(6))
    first, second = torch.zeros(1, t), torch.zeros(1, t)
    first[:, :2] = 1.0
    second[:, 5:] = 1.0
    union = union_mask([first, second])
    _, out_bg = shared_attention(
        (q_bl, k_bl, v_bl), (q_bg, k_bg, v_bg), heads, SharingMode.MASKED, union, 1e-6
    )
    # Reference: BG over [K_blend outside both objects; K_bg], as if the inside keys were absent.
    keep = (union[0] < 0.5).nonzero().flatten()
    k_ref = torch.cat([k_bl[:, keep], k_bg], dim=1)
    v_ref = torch.cat([v_bl[:, keep], v_bg], dim=1)
    from layerfusion_core.method.blend import sdpa_attention

    torch.testing.assert_close(out_bg, sdpa_attention(q_bg, k_ref, v_ref, heads), atol=1e-4, rtol=0)
    assert suppression_bias(union, 1e-6)[0, :2].max() < -13  # log(1e-6)
