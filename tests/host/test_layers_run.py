"""K foreground layers in one run, on the tiny model in a real ComfyUI: every stream against a
plain KSampler of its own prompt and seed, layouts that keep a layer inside its box, the early
latent paste, and pinned streams."""

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.tiny_sdxl import make_cond, make_latent
from support.triplet_runs import NO_BLEND, assert_same, plain

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_layers
from layerfusion_core.comfy_runtime.layered import layered_plan
from layerfusion_core.layers.prompts import Box, LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.method.latent_pins import Pin
from layerfusion_core.method.streams import Stream, StreamRole, StreamSet
from layerfusion_core.options import LayerFusionOptions, LayoutOptions

FG0, FG1 = Stream(StreamRole.FG, 0), Stream(StreamRole.FG, 1)
BG, BL = Stream(StreamRole.BG), Stream(StreamRole.BLENDED)
SEED = 7
SETTINGS = SamplerSettings(SEED, 3, 5.0, "euler", "normal")
SIZE = 128  # pixels: the tiny latent is 16 x 16


def layer(seed: int, name: str, box: Box | None = None) -> LayerPrompt:
    cond = make_cond(seed)
    cond[0][1]["layerfusion_eos_index"] = 6
    return LayerPrompt(cond, f"prompt {seed}", name, box)


def two_layers(box: Box | None = None) -> LayerChain:
    return LayerChain().add(layer(1, "back")).add(layer(5, "front", box))


def run_chain(model, chain, options=None, weights="tiny", settings=SETTINGS, blended=None):
    prompts = LayeredPrompts(chain, make_cond(2), blended or make_cond(3), make_cond(4))
    plan = layered_plan(prompts, make_latent(1), options or LayerFusionOptions())
    if weights == "tiny":
        weights = tiny_fg_weights(model)
    return plan, sample_layers(model, weights, plan, settings)


def probe_inputs(model):
    """A clone recording the main calls' UNet inputs [rows, 4, h, w] with their chunk order."""
    import comfy.patcher_extension

    seen = []

    def probe(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        seen.append((x.detach().clone(), tuple(transformer_options.get("cond_or_uncond", ()))))
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "layerfusion_test_inputs", probe
    )
    return clone, seen


def rows_of(x, stream, stream_set, chunk=0):
    """The rows of ``stream`` in one chunk of a main call's input (one image)."""
    row = chunk * len(stream_set) + stream_set.streams.index(stream)
    return x[row : row + 1]


def test_two_layers_off_each_stream_equals_a_plain_run_of_its_prompt_and_seed(tiny_sdxl):
    weights = tiny_fg_weights(tiny_sdxl, strength=0.0)
    plan, result = run_chain(tiny_sdxl, two_layers(), NO_BLEND, weights=weights)
    references = {
        FG0: plain(tiny_sdxl, plan.prompts[FG0], seed=SEED),
        FG1: plain(tiny_sdxl, plan.prompts[FG1], seed=SEED + 1),  # per-layer noise: seed + k
        BG: plain(tiny_sdxl, plan.prompts[BG], seed=SEED),
        BL: plain(tiny_sdxl, plan.prompts[BL], seed=SEED),
    }
    for stream, reference in references.items():
        assert_same(result.latents[stream], reference)
    assert not torch.allclose(result.latents[FG0], result.latents[FG1])


def test_two_layers_with_ancestral_noise_follow_their_own_seeds(tiny_sdxl):
    weights = tiny_fg_weights(tiny_sdxl, strength=0.0)
    settings = SamplerSettings(SEED, 3, 5.0, "euler_ancestral", "normal")
    plan, result = run_chain(tiny_sdxl, two_layers(), NO_BLEND, weights=weights, settings=settings)
    assert_same(
        result.latents[FG1], plain(tiny_sdxl, plan.prompts[FG1], sampler="euler_ancestral", seed=SEED + 1)
    )
    assert_same(result.latents[BG], plain(tiny_sdxl, plan.prompts[BG], sampler="euler_ancestral", seed=SEED))


def test_fg_weights_reach_every_fg_layer_and_nothing_else(tiny_sdxl):
    _, off = run_chain(tiny_sdxl, two_layers(), NO_BLEND, weights=None)
    _, on = run_chain(tiny_sdxl, two_layers(), NO_BLEND)
    for stream in (FG0, FG1):
        assert (on.latents[stream] - off.latents[stream]).abs().max() > 1e-3
    for stream in (BG, BL):
        assert torch.equal(on.latents[stream], off.latents[stream])


def test_a_box_keeps_its_layers_mask_inside_the_feathered_box(tiny_sdxl):
    box = Box(0, 0, 32, 32)
    _, result = run_chain(tiny_sdxl, two_layers(box))
    soft, hard = result.masks[FG1]
    assert soft.shape == (1, SIZE, SIZE)
    # Feathered by one cell of the coarsest attention grid (4 x 4 px here: 32 px) and
    # resampled bilinearly to the image: nothing past that margin.
    margin = 2 * SIZE // 4
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[
        max(0, box.y - margin) : box.y + box.height + margin,
        max(0, box.x - margin) : box.x + box.width + margin,
    ] = False
    assert outside.any()
    assert soft[0][outside].max() < 1e-3 and hard[0][outside].max() < 1e-3
    assert soft[0][: box.height, : box.width].max() > 0.1  # the layer is there, inside its box
    # The layer without a box is not restricted.
    assert result.masks[FG0][0][0][outside].max() > 1e-3


def test_the_early_paste_makes_the_boxed_layer_equal_blended_inside_its_box(tiny_sdxl):
    box = Box(32, 32, 64, 64)  # latent cells 4..12
    steps = 6
    options = LayerFusionOptions(layout=LayoutOptions(paste_end_percent=0.5))
    probe, seen = probe_inputs(tiny_sdxl)
    plan, _ = run_chain(
        probe, two_layers(box), options, settings=SamplerSettings(SEED, steps, 5.0, "euler", "normal")
    )
    stream_set = plan.stream_set
    main = [x for x, chunks in seen if x.shape[0] == len(stream_set) * len(chunks)]
    assert len(main) == steps
    inside = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    import comfy.samplers

    sampling = tiny_sdxl.get_model_object("model_sampling")
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1]]
    paste_sigma = float(sampling.percent_to_sigma(0.5))
    pasted = [i for i, s in enumerate(sigmas) if s > paste_sigma]
    assert 0 < len(pasted) < steps
    for i in pasted:  # at every evaluation of the window, up to its end
        fg1, blended = rows_of(main[i], FG1, stream_set), rows_of(main[i], BL, stream_set)
        assert torch.equal(fg1[inside], blended[inside])
        assert not torch.equal(fg1, blended)  # only inside the box
    after = main[pasted[-1] + 1]
    assert not torch.equal(rows_of(after, FG1, stream_set)[inside], rows_of(after, BL, stream_set)[inside])


def test_a_pinned_stream_follows_its_targets_at_every_evaluation_and_ends_on_them(tiny_sdxl):
    steps = 4
    g = torch.Generator().manual_seed(11)
    final = torch.randn(1, 4, 16, 16, generator=g)
    eps = torch.randn(1, 4, 16, 16, generator=g)
    targets = {}

    def target(sigma: float) -> torch.Tensor:
        targets[sigma] = final + sigma * eps
        return targets[sigma]

    stream_set = StreamSet()
    fg, bg, bl, neg = (make_cond(s) for s in (1, 2, 3, 4))
    plan = RunPlan(
        stream_set,
        {stream_set.streams[0]: fg, BG: bg, BL: bl},
        neg,
        make_latent(1),
        LayerFusionOptions(),
        pins=(Pin(BL, target),),
    )
    probe, seen = probe_inputs(tiny_sdxl)
    result = sample_layers(
        probe, tiny_fg_weights(tiny_sdxl), plan, SamplerSettings(SEED, steps, 5.0, "euler", "normal")
    )
    sampling = tiny_sdxl.get_model_object("model_sampling")
    main = [(x, chunks) for x, chunks in seen if x.shape[0] == len(stream_set) * len(chunks)]
    assert len(main) == steps
    evaluated = [s for s in targets if s > 0]
    assert len(evaluated) == steps
    for (x, _), sigma in zip(main, sorted(evaluated, reverse=True), strict=True):
        # The UNet sees the pinned latent at that sigma: targets are in the LATENT's space, taken
        # into the sampler's and scaled as ComfyUI scales every row.
        expected = sampling.calculate_input(
            torch.tensor([sigma]), tiny_sdxl.model.process_latent_in(targets[sigma])
        )
        torch.testing.assert_close(rows_of(x, BL, stream_set), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.latents[BL], final)
    assert not torch.equal(result.latents[BG], final)


def test_layer_errors_name_the_layer_and_the_input(tiny_sdxl):
    with pytest.raises(ValueError, match="layers: at most 4 foreground layers"):
        chain = LayerChain()
        for i in range(5):
            chain = chain.add(layer(i + 1, f"l{i}"))
    with pytest.raises(ValueError, match=r"layer 'front' box: .* is not inside the 128x128 image"):
        run_chain(tiny_sdxl, two_layers(Box(100, 0, 64, 64)))
    with pytest.raises(ValueError, match=r"layer 'front' box: expected at least 8x8 pixels"):
        run_chain(tiny_sdxl, two_layers(Box(0, 0, 4, 64)))
    wrong_mask = LayerPrompt(layer(5, "front").conditioning, "t", "front", mask=torch.ones(64, 64))
    with pytest.raises(
        ValueError, match=r"layer 'front' mask: expected a MASK of the image's size 128x128, got \[64, 64\]"
    ):
        run_chain(tiny_sdxl, LayerChain().add(layer(1, "back")).add(wrong_mask))
    other_clip = LayerPrompt(make_cond(5, context_dim=32), "t", "front")
    with pytest.raises(ValueError, match="CLIPs of different widths"):
        run_chain(tiny_sdxl, LayerChain().add(layer(1, "back")).add(other_clip))


def test_the_couple_reaches_only_the_boxed_layer_and_only_while_it_lasts(tiny_sdxl):
    box = Box(0, 0, 64, 128)
    boxed = LayerPrompt(layer(5, "front").conditioning, "t", "front", box, empty=make_cond(12))
    chain = LayerChain().add(layer(1, "back")).add(boxed)
    never = LayerFusionOptions(
        blend=NO_BLEND.blend, layout=LayoutOptions(couple_end_percent=0.0, paste_end_percent=0.0)
    )
    always = LayerFusionOptions(
        blend=NO_BLEND.blend, layout=LayoutOptions(couple_end_percent=1.0, paste_end_percent=0.0)
    )
    _, off = run_chain(tiny_sdxl, chain, never)
    _, on = run_chain(tiny_sdxl, chain, always)
    assert (on.latents[FG1] - off.latents[FG1]).abs().max() > 1e-3
    for stream in (FG0, BG, BL):
        assert torch.equal(on.latents[stream], off.latents[stream])
