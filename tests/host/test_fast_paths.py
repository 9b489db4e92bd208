"""The fast paths inside a real ComfyUI: merged FG copies kept across runs, prior-pass schedule."""

import pytest
import torch
from host.test_triplet_runtime import BG, BL, FG, NO_BLEND, conds, run
from support.fg_tiny import tiny_fg_weights, tiny_lora_state_dict
from support.host_probes import record_unet_calls
from support.tiny_sdxl import make_latent

from layerfusion_core.comfy_runtime.patching import patch_model
from layerfusion_core.comfy_runtime.run_inputs import prepare_run
from layerfusion_core.method.controller import LayerFusionController
from layerfusion_core.method.run_plan import RunPlan
from layerfusion_core.options import BlendOptions, LayerFusionOptions, LayerSet, PriorOptions, PriorTiming


def with_weight_patch(model):
    """A clone carrying an ordinary ComfyUI LoRA weight patch (a different set of base weights)."""
    import comfy.weight_adapter

    sd = tiny_lora_state_dict(model, rank=2, seed=9)
    clone = model.clone()
    patches = {}
    for key in [k for k in sd if k.endswith("::lora::0")]:
        path = key.removesuffix(".weight::lora::0")
        up, down = sd[key], sd[f"{path}.weight::lora::1"]
        patches[f"{path}.weight"] = comfy.weight_adapter.LoRAAdapter(
            set(), (up, down, None, None, None, None)
        )
    assert len(clone.add_patches(patches, 1.0)) == len(patches)
    return clone


def test_merged_copies_are_built_once_across_runs_and_freed_on_unload(tiny_sdxl):
    import comfy.model_management as mm

    mm.unload_all_models()  # a known start: earlier tests may leave the model half-patched
    weights = tiny_fg_weights(tiny_sdxl, application="merged")
    first = run(tiny_sdxl, NO_BLEND, weights=weights, steps=2)
    count = len(weights.deltas)
    assert weights.merged.builds == count and len(weights.merged) == count
    assert weights.merged.num_bytes > 0
    again = run(tiny_sdxl, NO_BLEND, weights=weights.with_settings(1.0, "merged"), steps=2)
    assert weights.merged.builds == count  # reused: same weights, file, strength, dtype
    assert torch.equal(again.latents[FG], first.latents[FG])

    patched = run(with_weight_patch(tiny_sdxl), NO_BLEND, weights=weights, steps=2)
    assert weights.merged.builds == 2 * count  # other base weights: rebuilt, not reused
    fly = run(
        with_weight_patch(tiny_sdxl), NO_BLEND, weights=weights.with_settings(1.0, "on_the_fly"), steps=2
    )
    # A stale copy would give the unpatched model's FG; on the fly always uses the live weights.
    assert (patched.latents[FG] - fly.latents[FG]).abs().max() <= 2e-5 * fly.latents[FG].abs().max()

    run(tiny_sdxl, NO_BLEND, weights=weights, steps=2)
    assert weights.merged.builds == 3 * count  # back on the unpatched weights

    # Unloading a LayerFusion model clone (ComfyUI detaches it, unpatching) frees the copies.
    fg, bg, bl, neg = conds()
    plan = RunPlan.triplet(fg, bg, bl, neg, make_latent(1), LayerFusionOptions())
    clone, _ = patch_model(tiny_sdxl, weights, prepare_run(tiny_sdxl, weights, plan))
    mm.load_models_gpu([clone])
    assert len(weights.merged) == count
    mm.unload_all_models()
    assert len(weights.merged) == 0 and weights.merged.num_bytes == 0


@pytest.mark.parametrize("application", ["on_the_fly", "merged"])
def test_fg_weights_leave_bg_and_blended_bit_identical(tiny_sdxl, application):
    off = run(tiny_sdxl, NO_BLEND, weights=None)
    on = run(tiny_sdxl, NO_BLEND, weights=tiny_fg_weights(tiny_sdxl, application=application))
    assert (on.latents[FG] - off.latents[FG]).abs().max() > 1e-3
    assert torch.equal(on.latents[BG], off.latents[BG])
    assert torch.equal(on.latents[BL], off.latents[BL])


def prior_passes(model, options, steps=4):
    probe, calls = record_unet_calls(model)
    result = run(probe, options, steps=steps)
    assert torch.isfinite(result.latents[BL]).all()
    return len([c for c in calls if c.batch == 1]), len(calls), result


def test_previous_only_runs_no_prior_pass_and_still_blends(tiny_sdxl):
    fast = LayerFusionOptions(prior=PriorOptions(timing=PriorTiming.PREVIOUS_ONLY))
    passes, calls, result = prior_passes(tiny_sdxl, fast)
    assert passes == 0 and calls == 4
    no_blend = run(tiny_sdxl, NO_BLEND, steps=4)
    assert (result.latents[BL] - no_blend.latents[BL]).abs().max() > 1e-4
    assert result.soft_mask.max() > 0.5


def test_prior_passes_run_only_inside_the_blending_window(tiny_sdxl):
    late = LayerFusionOptions(blend=BlendOptions(start_percent=0.5))
    passes, calls, result = prior_passes(tiny_sdxl, late)
    assert 0 < passes < 4 and calls == 4 + passes
    assert result.soft_mask.max() > 0.5


EARLY_END = LayerFusionOptions(  # the last recorded block is the middle one: no decoder in the pass
    prior=PriorOptions(structure_layer="middle.0.0"), blend=BlendOptions(layers=LayerSet(spec="input"))
)


@pytest.mark.parametrize("options", [LayerFusionOptions(), EARLY_END])
def test_prior_pass_ends_at_its_last_map_and_changes_nothing(tiny_sdxl, monkeypatch, options):
    """The prior pass stops after the cross-attention of the last block it records (the
    model's output layers never see a batch-1 call), and the run equals one whose prior
    pass runs to the end."""
    rows_out = []
    hook = tiny_sdxl.model.diffusion_model.out.register_forward_hook(
        lambda _module, _args, out: rows_out.append(out.shape[0])
    )
    try:
        probe, calls = record_unet_calls(tiny_sdxl)
        stopped = run(probe, options, steps=3)
        assert [c.batch for c in calls].count(1) == 3  # one prior pass per evaluation
        assert rows_out == [6, 6, 6]  # only the main calls reach the output layers
        monkeypatch.setattr(LayerFusionController, "prior_pass_end", ("none", 0, 0))
        rows_out.clear()
        full = run(tiny_sdxl, options, steps=3)
        assert rows_out == [1, 6, 1, 6, 1, 6]
    finally:
        hook.remove()
    for role in (FG, BG, BL):
        assert torch.equal(stopped.latents[role], full.latents[role])
    assert torch.equal(stopped.soft_mask, full.soft_mask)
