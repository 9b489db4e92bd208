"""priors.py against float64 references written here, plus known answers and invariants."""

import math

import pytest
import torch

from layerfusion_core.method.priors import (
    OrientationVote,
    blend_masks,
    content_prior,
    correlation,
    minmax,
    resize_prior,
    sparsity_score,
    structure_prior,
)
from layerfusion_core.options import PriorOrientation, SparsityFormula


def ref_head_mean_probs(q, k, heads):
    b, t, c = q.shape
    d = c // heads
    qh = q.double().reshape(b, t, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, k.shape[1], heads, d).transpose(1, 2)
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return p.mean(dim=1)  # [B, T, Tk]


def ref_minmax(x):
    lo = x.min(dim=-1, keepdim=True).values
    hi = x.max(dim=-1, keepdim=True).values
    return (x - lo) / (hi - lo)


@pytest.mark.parametrize("b,t,heads,d,chunk", [(1, 16, 1, 8, 1024), (2, 37, 3, 8, 5), (3, 64, 4, 16, 64)])
def test_structure_prior_matches_float64_reference(b, t, heads, d, chunk):
    g = torch.Generator().manual_seed(b * 100 + t)
    q = torch.randn(b, t, heads * d, generator=g)
    k = torch.randn(b, t, heads * d, generator=g)
    m = ref_head_mean_probs(q, k, heads)
    expected = 1 - ref_minmax((m**2).sum(-1))
    got = structure_prior(q, k, heads, chunk_size=chunk)
    assert got.dtype == torch.float32 and got.shape == (b, t)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=0)
    sparse = structure_prior(q, k, heads, chunk_size=chunk, orientation=PriorOrientation.SPARSE)
    torch.testing.assert_close(sparse.double(), ref_minmax((m**2).sum(-1)), atol=2e-5, rtol=0)


def test_negative_entropy_formula_matches_reference():
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 20, 16, generator=g), torch.randn(2, 20, 16, generator=g)
    m = ref_head_mean_probs(q, k, 2)
    expected = (m * m.log()).sum(-1)
    got = sparsity_score(q, k, 2, chunk_size=3, formula=SparsityFormula.NEGATIVE_ENTROPY)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_structure_prior_computes_in_float32_from_half_inputs():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 24, 16, generator=g), torch.randn(1, 24, 16, generator=g)
    got = structure_prior(q.half(), k.half(), 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, structure_prior(q.half().float(), k.half().float(), 2))


def test_chunk_size_does_not_change_the_structure_prior():
    g = torch.Generator().manual_seed(11)
    q, k = torch.randn(2, 50, 24, generator=g), torch.randn(2, 50, 24, generator=g)
    full = structure_prior(q, k, 3, chunk_size=1024)
    for chunk in (1, 7, 49, 50):
        torch.testing.assert_close(structure_prior(q, k, 3, chunk_size=chunk), full, atol=1e-6, rtol=0)


def dense_sparse_block(t=16, obj=range(4, 10), heads=2, d=8):
    """Queries in ``obj`` attend uniformly to all keys (dense rows); the others attend
    sharply to their own key (sparse rows)."""
    keys = torch.eye(t, d * heads)[:, : d * heads] if t <= d * heads else None
    assert keys is not None
    q = torch.zeros(1, t, d * heads)
    k = torch.zeros(1, t, d * heads)
    k[0] = keys * 1.0
    for i in range(t):
        if i not in obj:
            q[0, i] = keys[i] * 200.0  # one-hot logits: almost all mass on key i
    return q, k


def test_known_answer_dense_rows_are_high_under_dense_orientation():
    obj = range(4, 10)
    q, k = dense_sparse_block(obj=obj)
    prior = structure_prior(q, k, heads=2)
    inside = prior[0, list(obj)]
    outside = prior[0, [i for i in range(16) if i not in obj]]
    assert inside.min() > 0.99 and outside.max() < 0.01
    sparse = structure_prior(q, k, heads=2, orientation=PriorOrientation.SPARSE)
    assert sparse[0, list(obj)].max() < 0.01


@pytest.mark.parametrize("eos_kind", ["int", "per_sample"])
def test_content_prior_matches_float64_reference(eos_kind):
    g = torch.Generator().manual_seed(5)
    b, t, length, heads, d = 3, 30, 154, 4, 8
    q = torch.randn(b, t, heads * d, generator=g)
    kt = torch.randn(b, length, heads * d, generator=g)
    p = ref_head_mean_probs(q, kt, heads)
    eos = 9 if eos_kind == "int" else torch.tensor([3, 80, 153])
    expected = (
        p[:, :, 9] if eos_kind == "int" else torch.stack([p[i, :, e] for i, e in enumerate(eos.tolist())])
    )
    got = content_prior(q, kt, heads, eos)
    assert got.dtype == torch.float32 and got.shape == (b, t)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eos_kind", ["per_sample", "fallback"])
def test_batched_content_prior_matches_float64_on_strided_rows_and_large_logits(eos_kind):
    """The attention hooks hand in one stream's rows as a strided view of the call's batch
    (every third row); logits of several hundred must not overflow the normaliser."""
    g = torch.Generator().manual_seed(8)
    heads, d, t, length = 10, 8, 21, 154
    q_call = torch.randn(6, t, heads * d, generator=g) * 12.0
    k_call = torch.randn(6, length, heads * d, generator=g) * 12.0
    q, kt = q_call[0::3], k_call[0::3]  # the FG rows of a cond + uncond call: a view
    assert not q.is_contiguous()
    p = ref_head_mean_probs(q, kt, heads)
    if eos_kind == "fallback":
        expected, got = p[:, :, 1:77].mean(-1), content_prior(q, kt, heads, None)
    else:
        eos = torch.tensor([5, 120])
        expected = torch.stack([p[i, :, e] for i, e in enumerate(eos.tolist())])
        got = content_prior(q, kt, heads, eos)
        assert expected.max() > 0.05  # some heads put real mass on the column
    assert got.dtype == torch.float32 and got.shape == (2, t)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        got, content_prior(q.contiguous(), kt.contiguous(), heads, None if eos_kind == "fallback" else eos)
    )


def test_content_prior_fallback_is_mean_of_first_window_without_bos():
    g = torch.Generator().manual_seed(6)
    q, kt = torch.randn(2, 12, 16, generator=g), torch.randn(2, 154, 16, generator=g)
    p = ref_head_mean_probs(q, kt, 2)
    torch.testing.assert_close(
        content_prior(q, kt, 2, None).double(), p[:, :, 1:77].mean(-1), atol=1e-7, rtol=0
    )


def test_content_prior_refuses_out_of_range_eos():
    q, kt = torch.randn(1, 4, 8), torch.randn(1, 77, 8)
    with pytest.raises(ValueError, match="eos_index"):
        content_prior(q, kt, 1, 77)


def test_blend_masks_match_reference_and_stay_in_unit_range():
    g = torch.Generator().manual_seed(8)
    s, c = torch.rand(4, 40, generator=g), torch.rand(4, 40, generator=g) * 0.01
    soft, hard = blend_masks(s, c, coefficient=10.0, threshold=0.5)
    ref_soft = ref_minmax(s.double() * c.double())
    torch.testing.assert_close(soft.double(), ref_soft, atol=1e-6, rtol=0)
    torch.testing.assert_close(hard.double(), torch.sigmoid(10 * (ref_soft - 0.5)), atol=1e-6, rtol=0)
    for m in (soft, hard):
        assert m.min() >= 0 and m.max() <= 1
    assert hard.min() >= torch.sigmoid(torch.tensor(-5.0)) - 1e-7  # the documented 0.7% floor


def test_minmax_of_a_flat_map_is_zero():
    x = torch.full((2, 10), 3.0)
    x[1, 3] += 1e-7
    assert torch.equal(minmax(x), torch.zeros(2, 10))


@pytest.mark.parametrize("src,dst", [((8, 8), (4, 4)), ((6, 10), (3, 5)), ((4, 4), (8, 8)), ((7, 5), (3, 2))])
def test_resize_prior_is_area_interpolation_on_any_grid(src, dst):
    g = torch.Generator().manual_seed(9)
    x = torch.rand(2, src[0] * src[1], generator=g)
    got = resize_prior(x, src, dst)
    assert got.shape == (2, dst[0] * dst[1])
    if src[0] % dst[0] == 0 and src[1] % dst[1] == 0:
        fh, fw = src[0] // dst[0], src[1] // dst[1]
        ref = x.double().reshape(2, dst[0], fh, dst[1], fw).mean(dim=(2, 4)).reshape(2, -1)
        torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)
    assert resize_prior(x, src, src) is x


def test_auto_orientation_votes_once_and_never_flips():
    obj = torch.zeros(1, 16)
    obj[0, 4:10] = 1
    normalised_sparsity = 1 - obj  # dense rows inside the object
    vote = OrientationVote(PriorOrientation.AUTO, evaluations=2)
    vote.observe(normalised_sparsity, obj)
    assert vote.decided is None
    vote.observe(normalised_sparsity, obj)
    assert vote.decided is PriorOrientation.DENSE
    vote.observe(normalised_sparsity, 1 - obj)  # would vote sparse: ignored after the decision
    assert vote.decided is PriorOrientation.DENSE

    flipped = OrientationVote(PriorOrientation.AUTO)
    flipped.observe(obj, obj)  # sparse rows on the object: the sparse orientation correlates
    assert flipped.decided is PriorOrientation.SPARSE
    assert OrientationVote(PriorOrientation.SPARSE).decided is PriorOrientation.SPARSE


def test_correlation_reference():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    ref = torch.stack([torch.corrcoef(torch.stack([a[i], b[i]]).double())[0, 1] for i in range(3)])
    torch.testing.assert_close(correlation(a, b).double(), ref, atol=1e-6, rtol=0)
