"""The triplet runtime inside a real ComfyUI, with a tiny random SDXL-shaped model."""

import dataclasses

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.host_probes import low_free_memory, record_unet_calls
from support.pack_loading import run_node
from support.tiny_sdxl import make_latent
from support.triplet_runs import BG, BL, DEFAULT, FG, NO_BLEND, assert_same, conds, plain, run

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from layerfusion_core.options import (
    BlendMode,
    BlendOptions,
    LayerFusionOptions,
    PriorOptions,
    PriorOrientation,
    PriorTiming,
    SharingMode,
)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde"])
def test_streams_equal_plain_ksampler_runs_when_blending_sharing_and_fg_are_off(tiny_sdxl, sampler):
    weights = tiny_fg_weights(tiny_sdxl, strength=0.0)
    result = run(tiny_sdxl, NO_BLEND, weights=weights, sampler=sampler)
    fg, bg, bl, _ = conds()
    for role, cond in ((FG, fg), (BG, bg), (BL, bl)):
        assert_same(result.latents[role], plain(tiny_sdxl, cond, sampler))


def test_fg_weights_change_only_the_fg_stream(tiny_sdxl):
    off = run(tiny_sdxl, NO_BLEND, weights=None)
    on = run(tiny_sdxl, NO_BLEND)
    assert (on.latents[FG] - off.latents[FG]).abs().max() > 1e-3
    assert torch.equal(on.latents[BG], off.latents[BG])
    assert torch.equal(on.latents[BL], off.latents[BL])


def test_merged_application_matches_on_the_fly(tiny_sdxl):
    fly = run(tiny_sdxl, NO_BLEND, steps=1)
    merged = run(tiny_sdxl, NO_BLEND, steps=1, weights=tiny_fg_weights(tiny_sdxl, application="merged"))
    assert_same(merged.latents[FG], fly.latents[FG])
    assert torch.equal(merged.latents[BG], fly.latents[BG])


def test_blending_changes_fg_and_blended_and_leaves_bg_without_sharing(tiny_sdxl):
    off = run(tiny_sdxl, NO_BLEND)
    blend_only = LayerFusionOptions(blend=BlendOptions(sharing=SharingMode.OFF))
    on = run(tiny_sdxl, blend_only)
    assert (on.latents[FG] - off.latents[FG]).abs().max() > 1e-3
    assert (on.latents[BL] - off.latents[BL]).abs().max() > 1e-3
    assert torch.equal(on.latents[BG], off.latents[BG])
    for mask in (on.soft_mask, on.hard_mask):
        assert mask.shape == (1, 128, 128) and mask.min() >= 0 and mask.max() <= 1
    assert on.soft_mask.max() > 0.5  # minmax-normalised: the object reaches 1 at its grid


@pytest.mark.parametrize("mode", [SharingMode.MASKED, SharingMode.BIDIRECTIONAL, SharingMode.ONE_DIRECTIONAL])
def test_sharing_modes_change_the_right_streams(tiny_sdxl, mode):
    no_share = run(tiny_sdxl, LayerFusionOptions(blend=BlendOptions(sharing=SharingMode.OFF)))
    shared = run(tiny_sdxl, LayerFusionOptions(blend=BlendOptions(sharing=mode)))
    assert (shared.latents[BL] - no_share.latents[BL]).abs().max() > 1e-4
    bg_changed = (shared.latents[BG] - no_share.latents[BG]).abs().max() > 1e-4
    assert bg_changed == (mode is not SharingMode.ONE_DIRECTIONAL)


@pytest.mark.parametrize(
    "prior",
    [
        PriorOptions(timing=PriorTiming.PREVIOUS),
        PriorOptions(orientation=PriorOrientation.AUTO),
        PriorOptions(orientation=PriorOrientation.SPARSE, structure_layer="output.4.1"),
    ],
)
def test_prior_options_run_and_differ_from_default(tiny_sdxl, prior):
    base = run(tiny_sdxl)
    other = run(tiny_sdxl, LayerFusionOptions(prior=prior))
    assert torch.isfinite(other.latents[BL]).all()
    if prior.orientation is not PriorOrientation.AUTO:
        assert (other.latents[BL] - base.latents[BL]).abs().max() > 1e-5


def test_previous_timing_runs_one_prior_pass_only(tiny_sdxl):
    model, calls = record_unet_calls(tiny_sdxl)
    run(model, LayerFusionOptions(prior=PriorOptions(timing=PriorTiming.PREVIOUS)), steps=3)
    fg_only = [c for c in calls if c.batch == 1]
    assert len(fg_only) == 1 and len(calls) == 4
    calls.clear()
    run(model, steps=3)
    assert len([c for c in calls if c.batch == 1]) == 3 and len(calls) == 6


def test_alpha_mode_samples_two_streams_and_no_prior_pass(tiny_sdxl):
    model, calls = record_unet_calls(tiny_sdxl)
    result = run(model, LayerFusionOptions(blend=BlendOptions(mode=BlendMode.ALPHA)))
    assert {c.batch for c in calls} == {4}  # FG + BG, cond and uncond; no FG-only pass
    assert torch.equal(result.latents[BL], result.latents[BG])
    assert result.soft_mask.max() > 0.5


def test_cfg_one_runs_without_negative_chunk(tiny_sdxl):
    model, calls = record_unet_calls(tiny_sdxl)
    result = run(model, cfg=1.0)
    assert all(c.cond_or_uncond == (0,) for c in calls)
    assert torch.isfinite(result.latents[BL]).all()


def test_two_triplets_in_one_batch_do_not_interact(tiny_sdxl):
    """Image 0 is bit-identical whatever image 1 is: no stream, prior or mask crosses images."""
    fg, bg, bl, neg = conds()
    weights = tiny_fg_weights(tiny_sdxl)
    results = []
    for other in (1, 5):
        latent = make_latent(2)
        latent["batch_index"] = [0, other]
        results.append(
            sample_triplet(
                tiny_sdxl,
                weights,
                RunPlan.triplet(fg, bg, bl, neg, latent, DEFAULT),
                SamplerSettings(7, 3, 5.0, "euler", "normal"),
            )
        )
    first, second = results
    for role in (FG, BG, BL):
        assert first.latents[role].shape == (2, 4, 16, 16)
        assert torch.equal(first.latents[role][0], second.latents[role][0])
        assert (first.latents[role][1] - second.latents[role][1]).abs().max() > 1e-3
    assert torch.equal(first.soft_mask[0], second.soft_mask[0]) and first.soft_mask.shape == (2, 128, 128)


def test_cond_and_uncond_in_separate_calls_give_the_same_result(tiny_sdxl):
    together = run(tiny_sdxl)
    model, calls = record_unet_calls(tiny_sdxl)
    with low_free_memory():
        split = run(model)
    chunks = {c.cond_or_uncond for c in calls}
    assert (1,) in chunks and (0,) in chunks and (1, 0) not in chunks
    for role in (FG, BG, BL):
        assert_same(split.latents[role], together.latents[role], tolerance=1e-3)


def test_caller_model_is_unchanged_after_runs_errors_and_cancel(tiny_sdxl, monkeypatch):
    import comfy.model_management as mm

    fg = conds()[0]
    before = plain(tiny_sdxl, fg)
    run(tiny_sdxl)
    assert torch.equal(plain(tiny_sdxl, fg), before)

    from layerfusion_core.method.controller import LayerFusionController

    calls = {"n": 0}
    original = LayerFusionController.blend_output

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("boom mid-run")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LayerFusionController, "blend_output", failing)
    with pytest.raises(RuntimeError, match="boom mid-run"):
        run(tiny_sdxl)
    monkeypatch.undo()
    assert torch.equal(plain(tiny_sdxl, fg), before)

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(tiny_sdxl)
    finally:
        mm.interrupt_current_processing(False)
    assert torch.equal(plain(tiny_sdxl, fg), before)


def test_another_packs_replace_on_the_same_layer_still_runs(tiny_sdxl):
    import comfy.ldm.modules.attention as attention

    seen = []

    def other(q, k, v, extra_options):
        seen.append(extra_options.get("layerfusion_phase"))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model = tiny_sdxl.clone()
    model.set_model_attn1_replace(other, "output", 5, 1)  # our structure layer
    model.set_model_attn2_replace(other, "output", 4)  # a 2-element key on a blended block
    result = run(model)
    assert torch.isfinite(result.latents[BL]).all()
    assert "prior" in seen and "main" in seen


def test_pag_chained_before_layerfusion_still_works(tiny_sdxl, comfy_host):
    import importlib

    pag = importlib.import_module("comfy_extras.nodes_pag").PerturbedAttentionGuidance
    model = run_node(pag, model=tiny_sdxl, scale=3.0)
    model = model[0] if isinstance(model, (tuple, list)) else model
    model = getattr(model, "result", (model,))[0] if not hasattr(model, "clone") else model
    with_pag = run(model)
    without = run(tiny_sdxl)
    assert torch.isfinite(with_pag.latents[BL]).all()
    assert (with_pag.latents[BL] - without.latents[BL]).abs().max() > 1e-4


def test_errors_name_the_input(tiny_sdxl):
    fg, bg, bl, neg = conds()
    bg = [[bg[0][0], {**bg[0][1], "area": (8, 8, 0, 0)}]]
    with pytest.raises(ValueError, match="bg conditioning: cannot stack conditioning key\\(s\\) area"):
        sample_triplet(
            tiny_sdxl,
            None,
            RunPlan.triplet(fg, bg, bl, neg, make_latent(1), DEFAULT),
            SamplerSettings(0, 2, 5.0, "euler", "normal"),
        )
    with pytest.raises(ValueError, match="blended conditioning: expected one conditioning entry, got 2"):
        sample_triplet(
            tiny_sdxl,
            None,
            RunPlan.triplet(fg, conds()[1], bl + bl, neg, make_latent(1), DEFAULT),
            SamplerSettings(0, 2, 5.0, "euler", "normal"),
        )
    from layerfusion_core.architectures.sdxl import SDXL
    from layerfusion_core.models.fg_weights import ForegroundWeightsError, parse_foreground_weights

    sdxl_weights = parse_foreground_weights(
        {f"{p.diffusers_path}.weight": torch.zeros(1).expand(*p.shape) for p in SDXL.projections}, SDXL
    )
    with pytest.raises(ForegroundWeightsError, match="do not fit the model"):
        run(tiny_sdxl, weights=sdxl_weights)

    class NotSDXL:
        model = torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match=r"model: LayerFusion needs an SDXL model.*got Linear"):
        sample_triplet(
            NotSDXL(),
            None,
            RunPlan.triplet(fg, conds()[1], bl, neg, make_latent(1), DEFAULT),
            SamplerSettings(0, 2, 5.0, "euler", "normal"),
        )


def test_options_roundtrip_by_value(tiny_sdxl):
    changed = dataclasses.replace(DEFAULT.blend, coefficient=5.0)
    assert changed != DEFAULT.blend and dataclasses.replace(changed, coefficient=10.0) == DEFAULT.blend
