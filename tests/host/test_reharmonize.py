"""Move and re-harmonise on the tiny model in a real ComfyUI (LAYERS.md 2): the identity
without re-denoising gives the composite, the pins hold the moved region inside their window
(seen through the sampler callback) and release it after, moves by whole cells and flips are
exact on the kept latents, a scale re-noises with fresh noise, BG and the layers' pixels never
change, and the effects layer stays off the layers."""

from __future__ import annotations

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.host_probes import cancelled
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import tiny_vae

from layerfusion_core.comfy_runtime import SamplerSettings
from layerfusion_core.comfy_runtime.layered import sample_layered
from layerfusion_core.comfy_runtime.reharmonizing import reharmonize
from layerfusion_core.layers.bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY
from layerfusion_core.layers.placement import Placement, alpha_at_latent
from layerfusion_core.layers.prompts import LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.options import LayerFusionOptions, ReharmonizeOptions

SIZE = 128  # pixels: latent 16 x 16
SETTINGS = SamplerSettings(7, 10, 5.0, "euler", "normal")


def layer(seed: int, name: str) -> LayerPrompt:
    cond = make_cond(seed)
    cond[0][1]["layerfusion_eos_index"] = 6
    return LayerPrompt(cond, f"prompt {seed}", name)


def square_rgba(seed: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """[1, SIZE, SIZE, 4]: random colour, opaque inside ``box`` (x, y, w, h), transparent
    outside, with a one-pixel half-transparent rim."""
    g = torch.Generator().manual_seed(seed)
    rgba = torch.rand(1, SIZE, SIZE, 4, generator=g)
    x, y, w, h = box
    alpha = torch.zeros(SIZE, SIZE)
    alpha[y - 1 : y + h + 1, x - 1 : x + w + 1] = 0.5
    alpha[y : y + h, x : x + w] = 1.0
    rgba[0, ..., 3] = alpha
    return rgba


@pytest.fixture(scope="module")
def decoded(comfy_host, make_tiny_sdxl):
    """A two-layer bundle of the tiny model, decoded: BG and BLENDED through the tiny VAE, the
    layers as known RGBA squares (the random transparent decoder gives no crisp alpha)."""
    from layerfusion_core.comfy_runtime.layer_decoding import vae_decode

    model = make_tiny_sdxl(0)
    chain = LayerChain().add(layer(1, "back")).add(layer(5, "front"))
    bundle = sample_layered(
        model, tiny_fg_weights(model), LayeredPrompts(chain, make_cond(2), None, make_cond(4)),
        make_latent(1, SIZE // 8, SIZE // 8), SETTINGS, LayerFusionOptions(),
    )  # fmt: skip
    with torch.inference_mode():
        images = {key: vae_decode(tiny_vae(), bundle.latents[key]) for key in (BG_KEY, BLENDED_KEY)}
    images["fg0"] = square_rgba(1, (16, 24, 40, 32))
    images["fg1"] = square_rgba(2, (72, 64, 32, 40))
    return model, bundle.with_images(images)


def run(model, bundle, placements, start=0.4, end=0.6, lock=True, observers=(), threshold=0.02):
    with torch.inference_mode():
        return reharmonize(
            model,
            tiny_vae(),
            bundle,
            placements,
            ReharmonizeOptions(start, end, lock, threshold),
            3,
            observers,
        )


def shifted(t: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """[..., h, w] moved by whole cells; the vacated cells are NaN (not compared)."""
    out = torch.full_like(t, float("nan"))
    h, w = t.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = t[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def same_where_defined(a: torch.Tensor, expected: torch.Tensor) -> None:
    defined = ~torch.isnan(expected)
    assert defined.any()
    assert torch.equal(a[defined], expected[defined])


def test_the_run_keeps_every_stream_at_the_keep_percent(decoded):
    model, bundle = decoded
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", SETTINGS.steps).tolist()
    keep = float(sampling.percent_to_sigma(0.4))
    assert bundle.keep_percent == 0.4
    assert bundle.kept_sigma == next(s for s in sigmas if s <= keep)
    assert set(bundle.kept) == {"fg0", "fg1", BG_KEY, BLENDED_KEY}
    for key, kept in bundle.kept.items():
        assert kept.shape == bundle.latents[key].shape
        # A noisy state: far from the final latent (unit noise is 1 / 0.13025 in this space).
        assert (kept - bundle.latents[key]).std() > 0.3 * bundle.kept_sigma


def test_identity_without_re_denoising_is_the_composite_of_the_final_latents(decoded):
    model, bundle = decoded
    moved = run(model, bundle, {}, start=1.0, end=1.0)
    # Independent reference in float64: BG below, then the layers back to front by their alphas.
    alphas = [alpha_at_latent(bundle.images[k][..., 3], (16, 16)).double() for k in ("fg0", "fg1")]
    z = bundle.latents[BG_KEY].double()
    for key, a in zip(("fg0", "fg1"), alphas, strict=True):
        z = z * (1 - a) + bundle.latents[key].double() * a
    torch.testing.assert_close(moved.latents[BLENDED_KEY].double(), z, atol=1e-6, rtol=1e-6)
    # lock_foreground: where a layer is opaque the output pixels are that layer's, exactly.
    for key in ("fg0", "fg1"):
        opaque = bundle.images[key][0, ..., 3] == 1
        assert opaque.any()
        assert torch.equal(moved.images[BLENDED_KEY][0][opaque], bundle.images[key][0, ..., :3][opaque])
    # Unlocked, the decoded composite shows there instead (the tiny VAE does not keep pixels).
    unlocked = run(model, bundle, {}, start=1.0, end=1.0, lock=False)
    opaque = bundle.images["fg0"][0, ..., 3] == 1
    assert not torch.equal(unlocked.images[BLENDED_KEY][0][opaque], bundle.images["fg0"][0, ..., :3][opaque])


def test_the_pin_holds_the_moved_layer_inside_its_window_and_frees_it_after(decoded):
    model, bundle = decoded
    seen = []
    move = Placement(16, -8, SIZE, SIZE)  # two cells right, one up
    moved = run(
        model,
        bundle,
        {"fg0": [move]},
        start=0.2,
        end=0.6,
        observers=(lambda i, s, x: seen.append((s, x.clone())),),
    )
    sampling = model.get_model_object("model_sampling")
    start, until = (float(sampling.percent_to_sigma(p)) for p in (0.2, 0.6))
    # The moved layer's path, built here from the run's latents by slicing whole cells.
    clean = shifted(bundle.latents["fg0"], 2, -1)
    noise = shifted((bundle.kept["fg0"] - bundle.latents["fg0"]) / bundle.kept_sigma, 2, -1)
    inside = alpha_at_latent(moved.images["fg0"][..., 3], (16, 16))[0, 0] == 1
    front = alpha_at_latent(moved.images["fg1"][..., 3], (16, 16))[0, 0] > 0
    region = inside & ~front  # where fg0 is opaque and fg1 does not cover it
    assert region.sum() >= 12
    held = [(s, x) for s, x in seen if s > until]
    free = [(s, x) for s, x in seen if s <= until]
    assert len(held) >= 2 and len(free) >= 2 and seen[0][0] <= start
    for sigma, x in held:
        target = model.model.process_latent_in(clean + sigma * noise)
        torch.testing.assert_close(x[0][:, region], target[0][:, region], atol=1e-6, rtol=1e-6)
    for sigma, x in free[1:]:  # the first free step still starts from the last pinned state
        target = model.model.process_latent_in(clean + sigma * noise)
        assert (x[0][:, region] - target[0][:, region]).abs().max() > 1e-3


def test_whole_cell_moves_and_flips_are_exact_on_the_kept_latents(decoded):
    model, bundle = decoded
    flip = Placement(0, 0, SIZE, SIZE, flip_h=True, flip_v=True)
    moved = run(model, bundle, {"fg0": [Placement(-24, 16, SIZE, SIZE)], "fg1": [flip]}, start=1.0, end=1.0)
    same_where_defined(moved.kept["fg0"], shifted(bundle.kept["fg0"], -3, 2))
    same_where_defined(moved.latents["fg0"], shifted(bundle.latents["fg0"], -3, 2))
    assert torch.equal(moved.kept["fg1"], torch.flip(bundle.kept["fg1"], (2, 3)))
    assert torch.equal(moved.latents["fg1"], torch.flip(bundle.latents["fg1"], (2, 3)))
    assert torch.equal(moved.kept[BG_KEY], bundle.kept[BG_KEY])


def test_a_scale_re_noises_the_clean_latent_with_fresh_noise(decoded):
    model, bundle = decoded
    moved = run(model, bundle, {"fg0": [Placement(-32, -32, 192, 192)]}, start=1.0, end=1.0)
    import comfy.sample

    noise = (moved.kept["fg0"] - moved.latents["fg0"]) / bundle.kept_sigma
    # A fresh draw as ComfyUI makes it (another seed), in the LATENT's space.
    fresh = model.model.process_latent_out(comfy.sample.prepare_noise(noise, 12345))
    # The start latent's noise has fresh noise's statistics: zero mean, the same spread, no
    # correlation between neighbouring cells (resampled noise would be smoother).
    assert abs(noise.mean()) < 0.1 * fresh.std()
    assert abs(noise.std() / fresh.std() - 1) < 0.1

    def lag(t: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack((t[..., :-1].flatten(), t[..., 1:].flatten())))[0, 1])

    assert abs(lag(noise)) < 0.1
    kept_noise = (bundle.kept["fg0"] - bundle.latents["fg0"]) / bundle.kept_sigma
    assert lag(torch.nn.functional.interpolate(kept_noise, scale_factor=1.5, mode="bilinear")) > 0.3
    # The clean latent is resampled: 1.5x bilinear about the canvas origin, 4 cells up-left.
    upscaled = torch.nn.functional.interpolate(bundle.latents["fg0"], size=(24, 24), mode="bilinear")
    torch.testing.assert_close(moved.latents["fg0"], upscaled[..., 4:20, 4:20], atol=1e-3, rtol=1e-4)


def test_bg_and_the_layers_pixels_never_change_and_effects_stay_off_the_layers(decoded):
    model, bundle = decoded
    moved = run(model, bundle, {"fg1": [Placement(-40, -16, SIZE, SIZE)]}, start=0.4, end=0.6)
    assert torch.equal(moved.images[BG_KEY], bundle.images[BG_KEY])
    assert torch.equal(moved.latents[BG_KEY], bundle.latents[BG_KEY])
    assert torch.equal(moved.images["fg0"], bundle.images["fg0"])
    expected = torch.zeros_like(bundle.images["fg1"])
    expected[:, : SIZE - 16, : SIZE - 40] = bundle.images["fg1"][:, 16:, 40:]
    assert torch.equal(moved.images["fg1"], expected)
    effects = moved.images[EFFECTS_KEY]
    assert effects.shape == (1, SIZE, SIZE, 4)
    for key in ("fg0", "fg1"):
        opaque = moved.images[key][0, ..., 3] == 1
        assert (effects[0, ..., 3][opaque] == 0).all()
    assert effects[0, ..., 3].max() > 0  # the re-harmonise changed something around them
    # With no threshold, BG + effects + the layers rebuild the re-harmonised image.
    exact = run(model, bundle, {"fg1": [Placement(-40, -16, SIZE, SIZE)]}, threshold=0.0)
    stack = bundle.images[BG_KEY][0]
    for key in (EFFECTS_KEY, "fg0", "fg1"):
        image = exact.images[key][0]
        stack = torch.lerp(stack, image[..., :3], image[..., 3:])
    torch.testing.assert_close(stack, exact.images[BLENDED_KEY][0], atol=1e-4, rtol=0)


def test_the_sampled_cost_is_one_row_from_p_start(decoded):
    """Only BLENDED is sampled, from the first step at p_start: the UNet sees one row per image
    (two with CFG's negative), at the run's last steps only."""
    import comfy.patcher_extension

    model, bundle = decoded
    calls = []

    def probe(executor, x, *args, **kwargs):
        calls.append(x.shape[0])
        return executor(x, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "layerfusion_test", probe)
    run(clone, bundle, {"fg0": [Placement(8, 0, SIZE, SIZE)]}, start=0.4, end=0.6)
    sampling = model.get_model_object("model_sampling")
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", SETTINGS.steps).tolist()
    remaining = sum(1 for s in sigmas[:-1] if s <= float(sampling.percent_to_sigma(0.4)) * (1 + 1e-6))
    assert calls == [2] * remaining


def test_cancel_stops_a_re_harmonise(comfy_host, decoded):
    model, bundle = decoded
    with cancelled(), pytest.raises(comfy_host.model_management.InterruptProcessingException):
        run(model, bundle, {"fg0": [Placement(8, 0, SIZE, SIZE)]})
