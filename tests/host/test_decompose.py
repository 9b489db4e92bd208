"""Image to layers on the tiny model in a real ComfyUI (LAYERS.md 3): the inversion replays to
its input, the pinned BLENDED stream follows the inverted latents and ends on the input, a
user mask keeps BG's attention off BLENDED inside it, the image reaches the FG layer, the
bundle re-harmonises, and bad inputs are refused by name."""

from __future__ import annotations

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.host_probes import cancelled
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import tiny_vae

from layerfusion_core.comfy_runtime import SamplerSettings
from layerfusion_core.comfy_runtime.decomposing import decompose, encode_image
from layerfusion_core.comfy_runtime.inversion import invert
from layerfusion_core.comfy_runtime.layered import sample_layered
from layerfusion_core.comfy_runtime.row_sampling import RowGuidance, sample_rows, schedule
from layerfusion_core.layers.prompts import LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.options import LayerFusionOptions

SIZE = 64  # pixels: latent 8 x 8
SETTINGS = SamplerSettings(7, 6, 5.0, "euler", "normal")
IMAGE_PROMPT = make_cond(3)
# Measured here (relative error of the replayed latent to the input, this test's image):
# the tiny random UNet is no smooth denoiser, so its replay error is large and shrinks slowly
# (normal schedule: 1.84 at 10 steps, 1.15 at 30, 0.68 at 100). With an exact denoiser for
# Gaussian data standing in for the UNet (below), euler's first-order error is all there is:
# z_T is off the ODE's solution by 0.110 at 10 steps and 0.036 at 30, and the replay comes
# back within 0.208 and 0.070 (inversion and replay err the same way, so they add up).
TINY_REPLAY_BOUND = {10: 2.0, 30: 1.3}
EXACT_STATE_BOUND = {10: 0.13, 30: 0.045}
EXACT_REPLAY_BOUND = {10: 0.25, 30: 0.085}
DATA_STD = 2.0  # of the Gaussian data the exact denoiser assumes (the model's latent space)


def layer(seed: int, name: str, mask: torch.Tensor | None = None) -> LayerPrompt:
    cond = make_cond(seed)
    cond[0][1]["layerfusion_eos_index"] = 6
    return LayerPrompt(cond, f"prompt {seed}", name, mask=mask)


def image(seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """A smooth random RGB image [1, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").movedim(1, -1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def exact_denoiser(model):
    """A clone of ``model`` whose UNet output is the exact noise prediction for Gaussian data
    N(0, DATA_STD^2): eps(x, sigma) = sigma x / (DATA_STD^2 + sigma^2). Its probability-flow
    ODE has the solution x(sigma) = x(0) sqrt(1 + sigma^2 / DATA_STD^2), so an inversion and a
    replay have a known answer."""
    import comfy.patcher_extension

    def unet(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        sigma = transformer_options["sigmas"].reshape(-1, 1, 1, 1).to(x)
        x_k = x * (sigma**2 + 1).sqrt()  # undo ComfyUI's EPS input scaling
        return sigma * x_k / (DATA_STD**2 + sigma**2)

    clone = model.clone()
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "layerfusion_test_exact", unet
    )
    return clone


def inverted_and_replayed(model, steps: int, latent: torch.Tensor):
    sigmas = schedule(model, steps, "euler", "normal", 1.0)
    path = invert(model, IMAGE_PROMPT, make_cond(4), latent, sigmas)
    replay = sample_rows(model, RowGuidance(IMAGE_PROMPT, make_cond(4), 1.0, "euler"), path.start, sigmas)
    return sigmas, path, replay


@pytest.fixture(scope="module")
def encoded(comfy_host):
    with torch.inference_mode():
        return encode_image(tiny_vae(), image())


@pytest.mark.parametrize("steps", [10, 30])
def test_inversion_then_a_plain_replay_comes_back_to_the_input(tiny_sdxl, encoded, steps):
    sigmas, path, replay = inverted_and_replayed(tiny_sdxl, steps, encoded)
    assert len(path.latents) == steps + 1 and torch.equal(path.latents[-1], encoded)
    assert path.sigmas == tuple(float(s) for s in sigmas)
    assert relative_error(path.start, encoded) > 1  # z_T is far from the image
    assert relative_error(replay, encoded) < TINY_REPLAY_BOUND[steps]


def test_the_replay_error_shrinks_with_more_steps(tiny_sdxl, encoded):
    errors = [relative_error(inverted_and_replayed(tiny_sdxl, n, encoded)[2], encoded) for n in (10, 30)]
    assert errors[1] < 0.8 * errors[0]


def test_with_an_exact_denoiser_inversion_follows_the_ode_and_the_replay_converges(tiny_sdxl, encoded):
    model = exact_denoiser(tiny_sdxl)
    to_model = tiny_sdxl.model.process_latent_in
    errors = {}
    for steps in (10, 30):
        _, path, replay = inverted_and_replayed(model, steps, encoded)
        errors[steps] = relative_error(replay, encoded)
        # Every kept state against the ODE's solution (in the sampler's space).
        for sigma, state in zip(path.sigmas, path.latents, strict=True):
            exact = to_model(encoded) * (1 + sigma**2 / DATA_STD**2) ** 0.5
            assert relative_error(to_model(state), exact) < EXACT_STATE_BOUND[steps], sigma
        assert errors[steps] < EXACT_REPLAY_BOUND[steps]
    assert errors[30] < 0.4 * errors[10]  # first order: a third of the error for three times the steps


def probe_calls(model):
    """A clone recording every UNet call's input [rows, 4, h, w], sigma and chunks."""
    import comfy.patcher_extension

    seen = []

    def probe(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        sigma = float(transformer_options["sigmas"].reshape(-1)[0])
        seen.append((x.detach().clone(), sigma, tuple(transformer_options.get("cond_or_uncond", ()))))
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "layerfusion_test_probe", probe
    )
    return clone, seen


def run(model, chain=None, picture=None, settings=SETTINGS, weights="tiny"):
    chain = chain or LayerChain().add(layer(1, "cat"))
    if weights == "tiny":
        weights = tiny_fg_weights(model)
    with torch.inference_mode():
        return decompose(
            model, weights, tiny_vae(), image() if picture is None else picture,
            LayeredPrompts(chain, make_cond(2), IMAGE_PROMPT, make_cond(4)), settings, LayerFusionOptions(),
        )  # fmt: skip


def test_the_pinned_blended_stream_follows_the_inversion_and_ends_on_the_image(tiny_sdxl, encoded):
    probe, seen = probe_calls(tiny_sdxl)
    bundle = run(probe)
    sigmas = schedule(tiny_sdxl, SETTINGS.steps, "euler", "normal", 1.0)
    path = invert(tiny_sdxl, IMAGE_PROMPT, make_cond(4), encoded, sigmas)  # the same inversion, again
    main = [(x, sigma, chunks) for x, sigma, chunks in seen if x.shape[0] == 3 * len(chunks)]
    assert len(main) == SETTINGS.steps
    sampling = tiny_sdxl.get_model_object("model_sampling")
    for (x, sigma, chunks), level in zip(main, path.sigmas, strict=False):
        assert sigma == pytest.approx(level)
        expected = sampling.calculate_input(
            torch.tensor([sigma]), tiny_sdxl.model.process_latent_in(path.at(sigma))
        )
        for chunk in range(len(chunks)):  # BLENDED is the last of FG, BG, BLENDED in every chunk
            torch.testing.assert_close(x[3 * chunk + 2 : 3 * chunk + 3], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(bundle.latents["blended"], encoded)
    # Every stream started from the inverted z_T (the first call's rows are all the same state).
    first = main[0][0]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])
    assert set(bundle.kept) == {"fg0", "bg", "blended"} and bundle.kept_sigma > 0


def test_a_user_mask_is_the_layers_mask(tiny_sdxl):
    region = torch.zeros(SIZE, SIZE)
    region[16:48, 16:48] = 1  # whole cells of the coarsest grid (16 px at this size)
    bundle = run(tiny_sdxl, LayerChain().add(layer(1, "cat", mask=region)))
    soft, hard = bundle.masks["fg0"]
    assert torch.equal(soft, hard)  # the region itself, not priors
    # At the structure block's grid, resampled to the image: 1 between the inside cells' centres,
    # 0 outside the outer cells' centres.
    assert (hard[0, 24:40, 24:40] == 1).all()
    assert (hard[0, :8] == 0).all() and (hard[0, 56:] == 0).all() and (hard[0, :, :8] == 0).all()
    # Without a mask the layer's masks come from its priors.
    priors = run(tiny_sdxl).masks["fg0"]
    assert not torch.equal(priors[0], priors[1])


def test_the_image_reaches_the_fg_layer_and_the_bundle_re_harmonises(tiny_sdxl):
    from layerfusion_core.comfy_runtime.layer_decoding import vae_decode
    from layerfusion_core.comfy_runtime.reharmonizing import reharmonize
    from layerfusion_core.layers.placement import Placement
    from layerfusion_core.options import ReharmonizeOptions

    chain = LayerChain().add(layer(1, "cat"))
    decomposed = run(tiny_sdxl, chain)
    text = sample_layered(
        tiny_sdxl, tiny_fg_weights(tiny_sdxl), LayeredPrompts(chain, make_cond(2), IMAGE_PROMPT, make_cond(4)),
        make_latent(1, SIZE // 8, SIZE // 8), SETTINGS, LayerFusionOptions(),
    )  # fmt: skip
    assert relative_error(decomposed.latents["fg0"], text.latents["fg0"]) > 0.1
    other = run(tiny_sdxl, chain, picture=image(seed=5))
    assert relative_error(decomposed.latents["fg0"], other.latents["fg0"]) > 0.05  # the image matters
    # The bundle is a text run's: decode BG and BLENDED, give the layer an alpha, move it.
    with torch.inference_mode():
        images = {key: vae_decode(tiny_vae(), decomposed.latents[key]) for key in ("bg", "blended")}
        fg = torch.rand(1, SIZE, SIZE, 4, generator=torch.Generator().manual_seed(2))
        fg[..., 3] = 0
        fg[:, 16:40, 16:40, 3] = 1
        images["fg0"] = fg
        moved = reharmonize(
            tiny_sdxl, tiny_vae(), decomposed.with_images(images), {"fg0": [Placement(16, 0, SIZE, SIZE)]},
            ReharmonizeOptions(), 0,
        )  # fmt: skip
    assert torch.equal(moved.images["fg0"][:, 16:40, 32:56], fg[:, 16:40, 16:40])
    assert not torch.equal(moved.latents["blended"], decomposed.latents["blended"])


def test_bad_inputs_are_refused_by_name(tiny_sdxl):
    with pytest.raises(
        ValueError, match=r"image: expected a width and height that are multiples of 8, got 60x64"
    ):
        run(tiny_sdxl, picture=torch.rand(1, 64, 60, 3))
    with pytest.raises(ValueError, match=r"image: expected an RGB IMAGE, got RGBA \(4 channels\)"):
        run(tiny_sdxl, picture=torch.rand(1, 64, 64, 4))
    with pytest.raises(
        ValueError, match=r"layer 'cat' mask: expected a MASK of the image's size 64x64, got \[32, 32\]"
    ):
        run(tiny_sdxl, LayerChain().add(layer(1, "cat", mask=torch.ones(32, 32))))
    with pytest.raises(ValueError, match=r"denoise: expected a denoise above 0"):
        run(tiny_sdxl, settings=SamplerSettings(7, 6, 5.0, "euler", "normal", 0.0))
    with pytest.raises(ValueError, match=r"denoise: expected 0 <= denoise <= 1, got 1.5"):
        SamplerSettings(7, 6, 5.0, "euler", "normal", 1.5)
    with pytest.raises(ValueError, match=r"steps: expected at least 1, got 0"):
        SamplerSettings(7, 0, 5.0, "euler", "normal")
    with pytest.raises(ValueError, match=r"image: expected finite pixel values"):
        run(tiny_sdxl, picture=torch.full((1, 64, 64, 3), float("nan")))


def test_a_batch_gives_one_decomposition_per_image(tiny_sdxl):
    pictures = torch.cat((image(0), image(5)))
    with torch.inference_mode():
        encoded = encode_image(tiny_vae(), pictures)
    bundle = run(tiny_sdxl, picture=pictures)
    assert bundle.num_images == 2 and torch.equal(bundle.latents["blended"], encoded)
    single = run(tiny_sdxl, picture=image(5))
    # Image 1 of the batch is the image decomposed alone, up to float batching noise (which the
    # random model amplifies: compared relative to the latent's magnitude).
    alone = single.latents["fg0"]
    assert (bundle.latents["fg0"][1:] - alone).abs().max() <= 1e-3 * alone.abs().max()


def test_cancel_stops_the_inversion_and_the_run(comfy_host, tiny_sdxl):
    with cancelled(), pytest.raises(comfy_host.model_management.InterruptProcessingException):
        run(tiny_sdxl)


def test_with_a_region_for_every_layer_no_prior_pass_runs(tiny_sdxl):
    region = torch.zeros(SIZE, SIZE)
    region[16:48, 16:48] = 1
    probe, seen = probe_calls(tiny_sdxl)
    run(probe, LayerChain().add(layer(1, "cat", mask=region)))
    main = [x for x, _, chunks in seen if x.shape[0] == 3 * len(chunks)]
    inversion = [x for x, _, chunks in seen if x.shape[0] == 1 and chunks == (0,)]
    assert len(main) == SETTINGS.steps and len(inversion) == SETTINGS.steps  # nothing else
    assert len(seen) == 2 * SETTINGS.steps
    probe, seen = probe_calls(tiny_sdxl)
    run(probe)  # without a region the prior pass (one FG row) runs at every step too
    assert len(seen) == 3 * SETTINGS.steps


def test_samplers_with_a_hidden_state_are_refused(tiny_sdxl):
    for sampler in ("uni_pc", "dpm_adaptive"):
        with pytest.raises(ValueError, match=rf"sampler_name: {sampler} steps on its own sigmas"):
            run(tiny_sdxl, settings=SamplerSettings(7, 6, 5.0, sampler, "normal"))


def test_inside_its_mask_the_layer_follows_the_image_through_eq2(tiny_sdxl, encoded):
    """Against the same decomposition with blending off (Eq. 2 never runs; both start from the
    same z_T): Eq. 2 changes the layer most inside its mask, and brings it closer to the image
    there."""
    from layerfusion_core.options import BlendOptions, LayerSet

    region = torch.zeros(SIZE, SIZE)
    region[16:48, 16:48] = 1
    chain = LayerChain().add(layer(1, "cat", mask=region))
    with_eq2 = run(tiny_sdxl, chain)
    off = LayerFusionOptions(blend=BlendOptions(layers=LayerSet(self_attention=False, cross_attention=False)))
    with torch.inference_mode():
        without = decompose(
            tiny_sdxl, tiny_fg_weights(tiny_sdxl), tiny_vae(), image(),
            LayeredPrompts(chain, make_cond(2), IMAGE_PROMPT, make_cond(4)), SETTINGS, off,
        )  # fmt: skip
    change = (with_eq2.latents["fg0"] - without.latents["fg0"]).abs().mean(dim=(0, 1))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    near = relative_error(with_eq2.latents["fg0"][..., 2:6, 2:6], encoded[..., 2:6, 2:6])
    far = relative_error(without.latents["fg0"][..., 2:6, 2:6], encoded[..., 2:6, 2:6])
    # Measured here: mean change 73.7 inside, 58.9 outside; distance to the image 4.86 with
    # Eq. 2, 5.49 without. (The tiny random UNet spreads any change widely; a real one less.)
    assert change[inside].mean() > 1.1 * change[~inside].mean()
    assert near < 0.95 * far
