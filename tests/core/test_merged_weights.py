"""The merged FG path: each row computed once, and merged copies kept across runs."""

import pytest
import torch
import torch.nn.functional as F

from layerfusion_core.models.fg_weights import LoraFactors
from layerfusion_core.models.merged_weights import MergedWeightCache
from layerfusion_core.models.row_deltas import RowDelta, RowSelection, make_row_delta_module, plain_weight


class CountingLinear(torch.nn.Linear):
    """A Linear that records the batch of every input its own forward computes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return super().forward(x)


def lora(out_f=8, in_f=12, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(out_f, rank, generator=g), torch.randn(rank, in_f, generator=g))


def row_module(base, delta, cache, selection, strength=0.7, application="merged"):
    return make_row_delta_module(
        base, RowDelta(delta, strength, application, selection, path="p", merged=cache)
    )


@pytest.mark.parametrize("grad", [False, True])  # inference writes FG rows in place
@pytest.mark.parametrize("rows", [[0, 3], [2], [0, 1, 2, 3, 4, 5]])
def test_merged_rows_are_computed_once_and_others_stay_bit_identical(rows, grad):
    torch.set_grad_enabled(grad)
    try:
        check_rows_computed_once(rows)
    finally:
        torch.set_grad_enabled(True)


def check_rows_computed_once(rows):
    torch.manual_seed(0)
    base, delta, selection = CountingLinear(12, 8), lora(), RowSelection()
    module = row_module(base, delta, MergedWeightCache(), selection)
    x = torch.randn(6, 5, 12)
    plain = F.linear(x, base.weight, base.bias)
    selection.indices = torch.tensor(rows)
    out = module(x)
    others = [i for i in range(6) if i not in rows]
    # The base forward saw each other row once, in runs of consecutive rows, and no FG row
    # (no call at all for a prior pass: every row is FG).
    assert sum(base.batches) == len(others) and len(base.batches) == len(
        set(others) - {i + 1 for i in others}
    )
    assert torch.equal(out[others], plain[others])
    expected = F.linear(x, base.weight + 0.7 * delta.dense(), base.bias)
    torch.testing.assert_close(out[rows], expected[rows], atol=1e-5, rtol=1e-5)


def test_merged_copy_is_reused_across_runs_and_rebuilt_when_its_key_changes():
    base, delta, cache = torch.nn.Linear(12, 8), lora(), MergedWeightCache()
    x = torch.randn(3, 2, 12)

    def run(strength=0.7, weights_id=None):
        selection = RowSelection()  # a new run builds new row modules over the same cache
        selection.weights_id = weights_id
        selection.indices = torch.tensor([0])
        return row_module(base, delta, cache, selection, strength)(x)

    first = run()
    assert cache.builds == 1 and len(cache) == 1
    assert torch.equal(run(), first) and cache.builds == 1
    run(strength=0.5)
    weight, _ = cache.lookup("p", base, x.double(), delta, 0.5, None, plain_weight)
    assert weight.dtype == torch.float64
    assert cache.builds == 3 and len(cache) == 1  # one copy per projection, the newest
    run(weights_id="patches-a")
    run(weights_id="patches-a")
    assert cache.builds == 4
    run(weights_id="patches-b")
    assert cache.builds == 5


def test_a_replaced_weight_tensor_is_never_served_from_the_old_copy():
    base, delta, cache = torch.nn.Linear(4, 4), lora(4, 4, 2), MergedWeightCache()
    selection = RowSelection()
    selection.indices = torch.tensor([0])
    module = row_module(base, delta, cache, selection, 1.0)
    x = torch.randn(2, 4)
    module(x)
    module.weight = torch.nn.Parameter(torch.zeros(4, 4))  # ComfyUI's set_attr_param
    out = module(x)
    torch.testing.assert_close(out[:1], F.linear(x[:1], delta.dense(), base.bias))
    assert cache.builds == 2


def test_num_bytes_counts_the_merged_copies_and_release_frees_them():
    cache = MergedWeightCache()
    selection = RowSelection()
    selection.indices = torch.tensor([1])
    modules = [
        make_row_delta_module(
            torch.nn.Linear(12, 8), RowDelta(lora(), 1.0, "merged", selection, path=p, merged=cache)
        )
        for p in ("a", "b")
    ]
    for m in modules:
        m(torch.randn(2, 12))
    assert cache.num_bytes == 2 * (8 * 12 + 8) * 4
    cache.release()
    assert cache.num_bytes == 0 and len(cache) == 0


def test_merged_falls_back_to_on_the_fly_while_weights_may_change_mid_run():
    torch.manual_seed(1)
    base, delta, cache = torch.nn.Linear(12, 8), lora(), MergedWeightCache()
    x = torch.randn(4, 3, 12)
    outs = {}
    for application in ("merged", "on_the_fly"):
        selection = RowSelection()
        selection.indices = torch.tensor([1, 2])
        selection.merge_allowed = False
        outs[application] = row_module(base, delta, cache, selection, application=application)(x)
    assert torch.equal(outs["merged"], outs["on_the_fly"]) and cache.builds == 0
