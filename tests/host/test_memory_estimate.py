"""ComfyUI's model management sees what a LayerFusion run holds and does: the FG weights are a
model it loads and counts, and the extra attention work scales its estimates."""

import math

import pytest
from support.fg_tiny import tiny_fg_weights
from support.host_probes import low_free_memory, record_unet_calls
from support.triplet_runs import NO_BLEND, conds, plain, run

from layerfusion_core.comfy_runtime.memory import attention_row_factor
from layerfusion_core.method.streams import StreamSet
from layerfusion_core.options import SharingMode

SHARING_FACTOR = 5 / 3  # BG and BLENDED rows see doubled keys: 3 rows cost 5


@pytest.fixture
def load_requests(monkeypatch):
    """Every ``load_models_gpu`` call of a run: (models, memory_required)."""
    import comfy.model_management as mm

    seen = []
    real = mm.load_models_gpu

    def recording(models, memory_required=0, *args, **kwargs):
        seen.append((list(models), memory_required))
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    return seen


def test_row_factor_counts_rows_with_doubled_keys():
    triplet = StreamSet()
    assert attention_row_factor(triplet, SharingMode.MASKED) == SHARING_FACTOR
    assert attention_row_factor(triplet, SharingMode.BIDIRECTIONAL) == SHARING_FACTOR
    assert attention_row_factor(triplet, SharingMode.ONE_DIRECTIONAL) == 4 / 3
    assert attention_row_factor(triplet, SharingMode.OFF) == 1.0


def test_fg_weights_are_loaded_and_counted_as_a_model(make_tiny_sdxl, load_requests, comfy_host):
    model = make_tiny_sdxl(0)
    weights = tiny_fg_weights(model)
    plain(model, conds()[0], images=3)
    (plain_models, plain_memory) = load_requests[-1]
    run(model, weights=weights)
    (models, memory) = load_requests[-1]
    extra = [m for m in models if m not in plain_models and m.model is not model.model]
    assert len(extra) == 1, models
    fg_patcher = extra[0]
    assert fg_patcher.model_size() == weights.num_bytes > 0
    assert any(lm.model is fg_patcher for lm in comfy_host.model_management.current_loaded_models)
    # The same noise shape (3 rows): the estimate is scaled by the sharing rows.
    assert memory == pytest.approx(plain_memory * SHARING_FACTOR, rel=1e-6)
    # A second run (another strength, the same file) reuses the same weights model.
    run(model, weights=weights.with_settings(0.5, "on_the_fly"))
    assert fg_patcher in load_requests[-1][0]


def test_no_fg_model_and_no_scaling_without_weights_or_sharing(make_tiny_sdxl, load_requests):
    model = make_tiny_sdxl(0)
    plain(model, conds()[0], images=3)
    plain_models, plain_memory = load_requests[-1]
    run(model, NO_BLEND, weights=tiny_fg_weights(model, strength=0.0))
    models, memory = load_requests[-1]
    assert len(models) == len(plain_models)
    assert memory == pytest.approx(plain_memory, rel=1e-6)


def test_cond_batching_decision_sees_the_extra_rows(make_tiny_sdxl):
    model = make_tiny_sdxl(0)
    rows = 6  # one triplet, cond and uncond
    needed = model.model.memory_required([rows, 4, 16, 16]) * 1.5
    # Enough for a plain batch of 6 rows, not for LayerFusion's 6 rows worth 10.
    free = int(needed * (1 + SHARING_FACTOR) / 2)
    probe, calls = record_unet_calls(model)
    with low_free_memory(free_bytes=free):
        plain(probe, conds()[0], images=3)
        assert {c.batch for c in calls} == {6}
        calls.clear()
        run(probe, steps=1)
    main_calls = [c for c in calls if c.batch == 3]
    assert main_calls and all(len(c.cond_or_uncond) == 1 for c in main_calls), calls
    assert not any(c.batch == 6 for c in calls)
    # The scaling lived in our calls only: the model's own factor is back at once.
    assert model.model.memory_usage_factor == make_tiny_sdxl(0).model.memory_usage_factor


def test_a_plain_run_after_layerfusion_gets_its_own_estimate(make_tiny_sdxl, load_requests):
    model = make_tiny_sdxl(0)
    plain(model, conds()[0], images=3)
    before = load_requests[-1][1]
    run(model)
    plain(model, conds()[0], images=3)
    assert load_requests[-1][1] == pytest.approx(before, rel=1e-9)


def test_merged_copies_still_to_build_are_in_the_estimate(make_tiny_sdxl, load_requests):
    model = make_tiny_sdxl(0)
    plain(model, conds()[0], images=3)
    plain_memory = load_requests[-1][1]
    weights = tiny_fg_weights(model, application="merged")
    merged_bytes = sum(math.prod(d.shape) * 4 for d in weights.deltas.values())  # float32 model
    run(model, weights=weights)
    first = load_requests[-1][1]
    # The host's estimate is made for whole rows: the copies round up to the next row.
    row = plain_memory / 6  # the estimate of one triplet's 3 rows counts 6 (cond and uncond)
    assert (
        plain_memory * SHARING_FACTOR + merged_bytes
        <= first
        <= plain_memory * SHARING_FACTOR + merged_bytes + 2 * row
    )
    assert weights.merged.num_bytes >= merged_bytes  # built, and kept for the next run
    run(model, weights=weights)
    assert load_requests[-1][1] == pytest.approx(plain_memory * SHARING_FACTOR, rel=1e-6)


def test_merged_copies_are_released_when_comfyui_unloads_the_fg_weights(make_tiny_sdxl, comfy_host):
    model = make_tiny_sdxl(0)
    weights = tiny_fg_weights(model, application="merged")
    run(model, weights=weights)
    plain(model, conds()[0])  # another workflow on the same model: the copies stay for reuse
    assert weights.merged.num_bytes > 0
    comfy_host.model_management.unload_all_models()
    assert weights.merged.num_bytes == 0
    run(model, weights=weights)  # and are rebuilt on the next merged run
    assert weights.merged.num_bytes > 0
