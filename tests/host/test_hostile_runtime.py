"""Hostile inputs to the triplet sampler through a real ComfyUI: an inpainting checkpoint,
a negative restricted to an area, an auto orientation whose vote would outlast the run."""

import logging

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_variants import build_tiny_sdxl_inpaint

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from layerfusion_core.method.streams import StreamRole
from layerfusion_core.options import (
    BlendOptions,
    LayerFusionOptions,
    LayerSet,
    PriorOptions,
    PriorOrientation,
    SharingMode,
)

FG, BG, BL = StreamRole.FG, StreamRole.BG, StreamRole.BLENDED
NO_BLEND = LayerFusionOptions(
    blend=BlendOptions(layers=LayerSet(self_attention=False, cross_attention=False), sharing=SharingMode.OFF)
)


def conds(negative=None):
    fg, bg, bl = (make_cond(s) for s in (1, 2, 3))
    fg[0][1]["layerfusion_eos_index"] = 6
    return fg, bg, bl, negative if negative is not None else make_cond(4)


DEFAULT = LayerFusionOptions()


def run(model, options=DEFAULT, latent=None, negative=None, weights="tiny", steps=3, **kw):
    fg, bg, bl, neg = conds(negative)
    if weights == "tiny":
        weights = tiny_fg_weights(model)
    latent = latent if latent is not None else make_latent(1)
    return sample_triplet(
        model,
        weights,
        RunPlan.triplet(fg, bg, bl, neg, latent, options),
        SamplerSettings(7, steps, 5.0, "euler", "normal", **kw),
    )


def inpaint_latent():
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1.0
    return {"samples": torch.randn(1, 4, 16, 16, generator=g), "noise_mask": mask}


@pytest.fixture(scope="module")
def inpaint_model(comfy_host):
    return build_tiny_sdxl_inpaint(0)


def test_inpainting_checkpoint_runs_and_its_streams_match_plain_ksampler(inpaint_model):
    import nodes

    latent = inpaint_latent()
    result = run(inpaint_model, NO_BLEND, latent=latent, weights=tiny_fg_weights(inpaint_model, strength=0.0))
    fg, bg, bl, neg = conds()
    for role, cond in ((FG, fg), (BG, bg), (BL, bl)):
        (plain,) = nodes.common_ksampler(inpaint_model, 7, 3, 5.0, "euler", "normal", cond, neg, latent)
        scale = plain["samples"].abs().max().item()
        assert (result.latents[role] - plain["samples"]).abs().max().item() <= 2e-5 * scale


def test_inpainting_prior_pass_sees_the_fg_rows_of_the_main_input(inpaint_model):
    """The prior pass's UNet input (latent + mask + masked latent) equals the FG rows of the
    main call's, so the priors describe the image being inpainted."""
    seen = []

    def probe(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        seen.append(
            (transformer_options.get("layerfusion_phase"), transformer_options.get("cond_or_uncond"), x)
        )
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)

    import comfy.patcher_extension

    model = inpaint_model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    result = run(model, latent=inpaint_latent(), steps=1)
    assert torch.isfinite(result.latents[FG]).all()
    prior = [x for phase, _, x in seen if phase == "prior"]
    main = [(order, x) for phase, order, x in seen if phase == "main"]
    assert len(prior) == 1 and len(main) == 1 and prior[0].shape[1] == 9
    order, x_main = main[0]
    fg_positive_row = list(order).index(0) * 3  # chunk of the positive, FG is the image's first row
    assert torch.equal(prior[0][0, 4:], x_main[fg_positive_row, 4:])


def area_negative():
    neg = make_cond(4)
    neg[0][1]["area"] = (8, 8, 0, 0)
    neg[0][1]["strength"] = 1.0
    return neg


def bounded_mask_negative():
    neg = make_cond(4)
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, :8] = 1.0
    neg[0][1].update({"mask": mask, "set_area_to_bounds": True, "mask_strength": 1.0})
    return neg


@pytest.mark.parametrize("negative", [area_negative, bounded_mask_negative])
def test_negative_restricted_to_an_area_is_refused_by_name(tiny_sdxl, negative):
    with pytest.raises(ValueError, match=r"negative: entry 1 of 1 has (area|set_area_to_bounds)"):
        run(tiny_sdxl, negative=negative())


def test_negative_with_a_full_size_mask_still_runs(tiny_sdxl):
    neg = make_cond(4)
    neg[0][1].update({"mask": torch.ones(1, 16, 16), "mask_strength": 1.0})
    result = run(tiny_sdxl, negative=neg, steps=1)
    assert torch.isfinite(result.latents[BL]).all()


SHARING_ONLY = LayerFusionOptions(
    prior=PriorOptions(orientation=PriorOrientation.AUTO),
    blend=BlendOptions(layers=LayerSet(self_attention=False, cross_attention=False)),
)


@pytest.mark.parametrize("votes", [6, 20])
def test_an_auto_vote_as_long_as_the_run_is_cut_to_half_and_blends(tiny_sdxl, caplog, votes):
    """A vote of v evaluations blends from the v-th on: one as long as the window (6 euler
    steps: 6 evaluations) would blend only in the last, nearly nothing (1.5e-6 of the scale
    off blending). It is cut to half the window, with a warning: the run equals a vote of 3,
    and BLENDED is far from the same run without blending."""
    without = run(tiny_sdxl, SHARING_ONLY, steps=6)
    long_vote = LayerFusionOptions(
        prior=PriorOptions(orientation=PriorOrientation.AUTO, auto_vote_evaluations=votes)
    )
    with caplog.at_level(logging.WARNING):
        result = run(tiny_sdxl, long_vote, steps=6)
    assert any(
        "auto_vote_evaluations is" in r.getMessage() and "uses 3" in r.getMessage() for r in caplog.records
    )
    half = LayerFusionOptions(prior=PriorOptions(orientation=PriorOrientation.AUTO, auto_vote_evaluations=3))
    assert torch.equal(result.latents[BL], run(tiny_sdxl, half, steps=6).latents[BL])
    scale = float(without.latents[BL].abs().max())
    assert float((result.latents[BL] - without.latents[BL]).abs().max()) > 1e-3 * scale
