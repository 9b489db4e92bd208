"""blend.py against float64 references, invariants and the sharing modes."""

import math

import pytest
import torch

from layerfusion_core.method.blend import blend_attention, sdpa_attention, shared_attention, suppression_bias
from layerfusion_core.options import SharingMode


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_blend_attention_matches_float64_equations():
    a_fg, a_bl = rand(2, 10, 6, seed=1), rand(2, 10, 6, seed=2)
    soft, hard = torch.rand(2, 10), torch.rand(2, 10)
    fg2, bl2 = blend_attention(a_fg, a_bl, soft, hard)
    s, h = soft.double()[..., None], hard.double()[..., None]
    ref_bl = s * a_fg.double() + (1 - s) * a_bl.double()
    ref_fg = h * ref_bl + (1 - h) * a_fg.double()  # Eq. 2 uses the updated A_blend'
    torch.testing.assert_close(bl2.double(), ref_bl, atol=1e-6, rtol=0)
    torch.testing.assert_close(fg2.double(), ref_fg, atol=1e-6, rtol=0)


def test_zero_masks_leave_both_streams_unchanged_and_zero_soft_leaves_blended():
    a_fg, a_bl = rand(3, 7, 4, seed=3), rand(3, 7, 4, seed=4)
    zeros = torch.zeros(3, 7)
    fg2, bl2 = blend_attention(a_fg, a_bl, zeros, zeros)
    assert torch.equal(fg2, a_fg) and torch.equal(bl2, a_bl)
    _, bl3 = blend_attention(a_fg, a_bl, zeros, torch.rand(3, 7))
    assert torch.equal(bl3, a_bl)


def test_full_masks_copy_fg_into_blended_and_back():
    a_fg, a_bl = rand(1, 5, 4, seed=5), rand(1, 5, 4, seed=6)
    ones = torch.ones(1, 5)
    fg2, bl2 = blend_attention(a_fg, a_bl, ones, ones)
    torch.testing.assert_close(bl2, a_fg)
    torch.testing.assert_close(fg2, a_fg)


def ref_attention(q, k, v, heads, bias=None):
    b, t, c = q.shape
    d = c // heads
    qh, kh, vh = (x.double().reshape(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        logits = logits + bias.double()[:, None, None, :]
    return (torch.softmax(logits, -1) @ vh).transpose(1, 2).reshape(b, t, c)


@pytest.mark.parametrize("mode", list(SharingMode))
def test_sharing_modes_match_float64_reference(mode):
    p, t, heads, d = 2, 9, 2, 4
    qb, kb, vb, qg, kg, vg = (rand(p, t, heads * d, seed=i) for i in range(6))
    hard = torch.rand(p, t)
    out_b, out_g = shared_attention((qb, kb, vb), (qg, kg, vg), heads, mode, hard, epsilon=1e-6)
    ks, vs = torch.cat([kb, kg], 1), torch.cat([vb, vg], 1)
    bias = torch.cat([torch.log(1 - hard.double() + 1e-6), torch.zeros(p, t, dtype=torch.float64)], 1)
    expected = {
        SharingMode.OFF: (ref_attention(qb, kb, vb, heads), ref_attention(qg, kg, vg, heads)),
        SharingMode.ONE_DIRECTIONAL: (ref_attention(qb, ks, vs, heads), ref_attention(qg, kg, vg, heads)),
        SharingMode.BIDIRECTIONAL: (ref_attention(qb, ks, vs, heads), ref_attention(qg, ks, vs, heads)),
        SharingMode.MASKED: (ref_attention(qb, ks, vs, heads), ref_attention(qg, ks, vs, heads, bias)),
    }[mode]
    torch.testing.assert_close(out_b.double(), expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_g.double(), expected[1], atol=1e-5, rtol=0)


def test_masked_sharing_hides_the_object_from_bg():
    """BG output must not depend on BLENDED values inside the object (hard = 1 there)."""
    p, t, c = 1, 8, 8
    qb, kb, vb, qg, kg, vg = (rand(p, t, c, seed=10 + i) for i in range(6))
    hard = torch.zeros(p, t)
    hard[:, 2:5] = 1.0
    _, out_g = shared_attention((qb, kb, vb), (qg, kg, vg), 2, SharingMode.MASKED, hard, epsilon=1e-12)
    vb2 = vb.clone()
    vb2[:, 2:5] += 100.0
    _, out_g2 = shared_attention((qb, kb, vb2), (qg, kg, vg), 2, SharingMode.MASKED, hard, epsilon=1e-12)
    torch.testing.assert_close(out_g, out_g2, atol=1e-6, rtol=0)


def test_masked_bias_is_per_key_never_per_query():
    seen = {}

    def spy(q, k, v, heads, mask=None):
        if mask is not None:
            seen["shape"] = tuple(mask.shape)
        return sdpa_attention(q, k, v, heads, mask)

    args = [rand(3, 16, 8, seed=i) for i in range(6)]
    shared_attention(
        tuple(args[:3]), tuple(args[3:]), 2, SharingMode.MASKED, torch.rand(3, 16), attention=spy
    )
    assert seen["shape"] == (6, 1, 32)  # BLENDED and BG queries fused: 2 x 3 pairs, one bias per key


def test_suppression_bias_values():
    hard = torch.tensor([[0.0, 1.0, 0.5]])
    torch.testing.assert_close(
        suppression_bias(hard, 1e-6), torch.log(torch.tensor([[1 + 1e-6, 1e-6, 0.5 + 1e-6]]))
    )


def test_masked_mode_needs_a_mask():
    args = [rand(1, 4, 4, seed=i) for i in range(6)]
    with pytest.raises(ValueError, match="hard mask"):
        shared_attention(tuple(args[:3]), tuple(args[3:]), 1, SharingMode.MASKED, None)
