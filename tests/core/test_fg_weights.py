"""fg_weights.py: parsing both formats, validation, and per-row application."""

import pytest
import torch
from support.manifests import load_manifest

from layerfusion_core.architectures.sdxl import SDXL, UNetShape, build_layout
from layerfusion_core.models.fg_weights import (
    ForegroundWeightsError,
    LoraFactors,
    Offset,
    parse_foreground_weights,
)
from layerfusion_core.models.row_deltas import RowDelta, RowSelection, make_row_delta_module
from layerfusion_core.options import WeightApplication

TINY = build_layout(
    "tiny", UNetShape(8, (1, 2), (1, 1), (1, 1), (1, 1, 1, 1), 1, context_dim=12, num_head_channels=4)
)


def lora_state_dict(layout, rank=3, seed=0, swap=False):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for p in layout.projections:
        up = torch.randn(p.shape[0], rank, generator=g) * 0.1
        down = torch.randn(rank, p.shape[1], generator=g) * 0.1
        a, b = (down, up) if swap else (up, down)
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = a
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = b
    return sd


def offsets_state_dict(layout, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    sd = {f"{p.diffusers_path}.weight": torch.randn(*p.shape, generator=g) * 0.1 for p in layout.projections}
    if bias:
        for p in layout.projections:
            if p.name == "to_out.0":
                sd[f"{p.diffusers_path}.bias"] = torch.randn(p.shape[0], generator=g) * 0.1
    return sd


def test_parse_lora_any_factor_order():
    sd = lora_state_dict(TINY)
    weights = parse_foreground_weights(sd, TINY)
    assert weights.file_format == "lora" and len(weights.deltas) == len(TINY.projections)
    swapped = parse_foreground_weights(lora_state_dict(TINY, swap=True), TINY)
    for path, d in weights.deltas.items():
        assert torch.equal(d.dense(), swapped.deltas[path].dense())


def test_lora_alpha_scales_by_rank():
    sd = lora_state_dict(TINY, rank=4)
    path = TINY.projections[0].ldm_path
    sd[f"diffusion_model.{path}.weight::lora::2"] = torch.tensor(2.0)
    assert parse_foreground_weights(sd, TINY).deltas[path].scale == 0.5


def test_parse_offsets_with_optional_bias():
    weights = parse_foreground_weights(offsets_state_dict(TINY, bias=True), TINY)
    assert weights.file_format == "offsets"
    outs = [d for p, d in weights.deltas.items() if p.endswith("to_out.0")]
    assert all(d.bias is not None for d in outs)


def test_unknown_and_misshaped_keys_are_named():
    sd = lora_state_dict(TINY)
    sd["diffusion_model.input_blocks.1.0.in_layers.2.weight::lora::0"] = torch.zeros(1)
    with pytest.raises(ForegroundWeightsError, match=r"unknown keys: diffusion_model\.input_blocks\.1\.0"):
        parse_foreground_weights(sd, TINY)
    sd = offsets_state_dict(TINY)
    key = f"{TINY.projections[5].diffusers_path}.weight"
    sd[key] = torch.zeros(3, 3)
    with pytest.raises(ForegroundWeightsError, match=rf"{key}: expected \[.*got \[3, 3\]"):
        parse_foreground_weights(sd, TINY)
    sd = offsets_state_dict(TINY)
    q_bias = f"{TINY.projections[0].diffusers_path}.bias"  # to_q has no bias: unknown extra
    sd[q_bias] = torch.zeros(TINY.projections[0].shape[0])
    with pytest.raises(ForegroundWeightsError, match="unknown keys"):
        parse_foreground_weights(sd, TINY)


def test_lora_factor_mismatch_is_named():
    sd = lora_state_dict(TINY)
    p = TINY.projections[2]
    sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = torch.zeros(3, 999)
    with pytest.raises(ForegroundWeightsError, match=r"mis-shaped.*are not up"):
        parse_foreground_weights(sd, TINY)


def test_sdxl_file_does_not_fit_another_model():
    weights = parse_foreground_weights(lora_state_dict(TINY), TINY)
    with pytest.raises(ForegroundWeightsError, match="do not fit the model"):
        weights.check_fits(SDXL)
    weights.check_fits(TINY)


def test_manifests_parse_against_the_sdxl_table():
    """Zero-strided stand-ins with the manifests' exact keys and shapes (no memory)."""
    for name in (
        "layer_xl_transparent_attn_expected_keys.INFERRED.json",
        "ld_diffusers_sdxl_attn_expected_keys.INFERRED.json",
    ):
        manifest = load_manifest(name)
        sd = {k: torch.zeros(1, dtype=torch.float16).expand(*shape) for k, shape in manifest.items()}
        weights = parse_foreground_weights(sd, SDXL)
        assert len(weights.deltas) == 560
        weights.check_fits(SDXL)


@pytest.mark.parametrize("kind", ["lora", "offsets"])
@pytest.mark.parametrize("application", list(WeightApplication))
def test_row_delta_equals_global_merge_on_fg_rows_and_leaves_others_bit_identical(kind, application):
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 8)
    delta = (
        LoraFactors(torch.randn(8, 3), torch.randn(3, 12))
        if kind == "lora"
        else Offset(torch.randn(8, 12) * 0.1, None)
    )
    selection = RowSelection()
    module = make_row_delta_module(base, RowDelta(delta, 0.7, application, selection))
    x = torch.randn(6, 5, 12)
    plain = base(x)
    selection.indices = torch.tensor([0, 3])
    out = module(x)
    merged = torch.nn.functional.linear(x, base.weight + 0.7 * delta.dense(), base.bias)
    others = [1, 2, 4, 5]
    assert torch.equal(out[others], plain[others])
    torch.testing.assert_close(out[[0, 3]], merged[[0, 3]], atol=1e-5, rtol=1e-5)
    selection.indices = None
    assert torch.equal(module(x), plain)


def test_row_delta_module_is_the_base_module_with_another_forward():
    base = torch.nn.Linear(4, 4)
    attributes = set(base.__dict__)
    selection = RowSelection()
    module = make_row_delta_module(base, RowDelta(Offset(torch.ones(4, 4)), 1.0, "merged", selection))
    assert isinstance(module, torch.nn.Linear) and type(base) is torch.nn.Linear
    assert set(base.__dict__) == attributes  # the delta is not stored on the base module
    # What the host records on the swapped-in module is true of the base module afterwards.
    module.host_flag = True
    module.weight = torch.nn.Parameter(torch.zeros(4, 4))  # a weight patch by path
    assert base.host_flag is True and base.weight is module.weight
    del module.host_flag
    assert not hasattr(base, "host_flag")
    selection.indices = torch.tensor([1])
    x = torch.randn(2, 4)
    torch.testing.assert_close(module(x)[0], base(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(module(x)[1], x[1] @ torch.ones(4, 4).T + base.bias)


def test_merged_cache_follows_in_place_weight_changes():
    base = torch.nn.Linear(4, 4)
    selection = RowSelection()
    module = make_row_delta_module(base, RowDelta(Offset(torch.ones(4, 4)), 1.0, "merged", selection))
    selection.indices = torch.tensor([0])
    x = torch.randn(2, 4)
    first = module(x)
    with torch.no_grad():
        base.weight.add_(1.0)  # shared parameter, patched in place
    second = module(x)
    expected = torch.nn.functional.linear(x[:1], base.weight + 1.0, base.bias)
    torch.testing.assert_close(second[:1], expected)
    assert not torch.equal(first, second)


def test_bias_offset_applies_in_both_modes():
    base = torch.nn.Linear(3, 2)
    offset = Offset(torch.zeros(2, 3), torch.tensor([1.0, -2.0]))
    for application in WeightApplication:
        selection = RowSelection()
        module = make_row_delta_module(base, RowDelta(offset, 0.5, application, selection))
        selection.indices = torch.tensor([1])
        x = torch.randn(2, 3)
        out = module(x)
        torch.testing.assert_close(out[1], base(x)[1] + torch.tensor([0.5, -1.0]))


def test_on_the_fly_uses_the_stored_factors_without_a_copy_and_matches_the_dense_delta():
    base = torch.nn.Linear(6, 5)
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(5, 2, generator=g), torch.randn(2, 6, generator=g)
    selection = RowSelection()
    delta = RowDelta(LoraFactors(up, down, scale=0.5), 0.8, "on_the_fly", selection)
    module = make_row_delta_module(base, delta)
    selection.indices = torch.tensor([1])
    x = torch.randn(2, 3, 6, generator=g)
    out = module(x)
    expected = torch.nn.functional.linear(x[1], base.weight + 0.8 * 0.5 * (up @ down), base.bias)
    torch.testing.assert_close(out[1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], base(x[0]), atol=0, rtol=0)
    ((first, second, _, alpha),) = delta._cache.values()
    assert first.data_ptr() == down.data_ptr() and second.data_ptr() == up.data_ptr()  # views, no copy
    assert alpha == 0.8 * 0.5
