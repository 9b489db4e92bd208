"""LayerFusion Re-harmonize as a node in a real ComfyUI, on the tiny stand-ins: widgets and a
LAYERS document move layers, Save Layers writes the effects layer (PNG, and in the PSD
between BG and the layers), the LAYERS output carries it, and bad inputs are refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.fg_tiny import tiny_fg_weights
from support.pack_loading import run_node
from support.reharmonize_node import run_reharmonize
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import TinyCLIP, tiny_vae

from layerfusion_core.options import LayoutOptions

SIZE = 64  # pixels (latent 8 x 8)
SETTINGS = {
    "seed": 7,
    "steps": 10,
    "cfg": 5.0,
    "sampler_name": "euler",
    "scheduler": "normal",
    "denoise": 1.0,
}


@pytest.fixture(scope="module")
def decoded(comfy_host, pack, tiny_sdxl):
    """A two-layer bundle from the Layers Sampler node, decoded: BG and BLENDED through the tiny
    VAE, the layers as random RGBA with soft alphas (Decode Layers' own test covers the
    transparent decoder, too slow to run here again)."""
    from layerfusion_core.comfy_runtime.layer_decoding import vae_decode

    clip = TinyCLIP()
    chain = None
    for text, name in (("a chair", "chair"), ("a cat", "cat")):
        node = pack.node("LayerFusionLayerPrompt")
        kw = {} if chain is None else {"layers": chain}
        chain = run_node(node, clip=clip, text=text, name=name, x=0, y=0, width=0, height=0, **kw).result[0]
    bundle, _ = run_node(
        pack.node("LayerFusionLayersSampler"), model=tiny_sdxl, fg_weights=tiny_fg_weights(tiny_sdxl),
        layers=chain, bg=make_cond(2), negative=make_cond(4), latent_image=make_latent(1, SIZE // 8, SIZE // 8),
        shared_noise=True, **SETTINGS,
    ).result  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    images = {key: torch.rand(1, SIZE, SIZE, 4, generator=generator) for key in bundle.order}
    images["fg0"][..., 3] = (images["fg0"][..., 3] > 0.5).float()  # some opaque, some clear pixels
    with torch.inference_mode():
        images.update({key: vae_decode(tiny_vae(), bundle.latents[key]) for key in ("bg", "blended")})
    return bundle.with_images(images)


def test_widgets_move_a_layer_and_the_outputs_carry_the_effects(pack, tiny_sdxl, decoded):
    moved, blended, effects, fgs, document = run_reharmonize(pack, tiny_sdxl, decoded, fg1_dx=16, fg1_dy=-8)
    expected = torch.zeros_like(decoded.images["fg1"])
    expected[:, : SIZE - 8, 16:] = decoded.images["fg1"][:, 8:, : SIZE - 16]
    assert torch.equal(moved.images["fg1"], expected)
    assert torch.equal(moved.images["fg0"], decoded.images["fg0"])
    assert torch.equal(moved.images["bg"], decoded.images["bg"])
    assert blended.shape == (1, SIZE, SIZE, 3) and effects.shape == (1, SIZE, SIZE, 4)
    assert fgs.shape == (2, SIZE, SIZE, 4) and torch.equal(fgs[1], expected[0])
    assert [(i["name"], i["z_index"], i["visible"]) for i in document["layers"]] == [
        ("bg", 0, True),
        ("effects", 1, True),
        ("chair", 2, True),
        ("cat", 3, True),
        ("blended", 4, False),
    ]
    assert not torch.equal(moved.latents["blended"], decoded.latents["blended"])
    # A second re-harmonise works on the first one's result (it kept what it needs).
    again = run_reharmonize(pack, tiny_sdxl, moved, fg1_dx=-16, fg1_dy=8)[0]
    assert torch.equal(again.images["fg1"][:, 8:, : SIZE - 16], decoded.images["fg1"][:, 8:, : SIZE - 16])


def test_a_layers_document_moves_layers_by_name(pack, tiny_sdxl, decoded):
    document = {
        "version": 1,
        "canvas": (SIZE, SIZE),
        "layers": [{"name": "bg"}, {"name": "chair", "x": -8, "flip_v": True}],
    }
    moved = run_reharmonize(pack, tiny_sdxl, decoded, layers=document)[0]
    expected = torch.zeros_like(decoded.images["fg0"])
    expected[:, :, : SIZE - 8] = torch.flip(decoded.images["fg0"], (1,))[:, :, 8:]
    assert torch.equal(moved.images["fg0"], expected)
    assert torch.equal(moved.images["fg1"], decoded.images["fg1"])


def test_presets_set_the_window(pack, tiny_sdxl, decoded):
    """The same move under two presets: different results; custom with p_start 1 re-denoises
    nothing (BLENDED is the composite, locked over by the layers)."""
    default = run_reharmonize(pack, tiny_sdxl, decoded, fg0_dx=8)[0]
    stronger = run_reharmonize(pack, tiny_sdxl, decoded, fg0_dx=8, preset="stronger_shadows")[0]
    assert not torch.equal(default.latents["blended"], stronger.latents["blended"])
    custom = run_reharmonize(pack, tiny_sdxl, decoded, fg0_dx=8, preset="custom", p_start=1.0, p_end=1.0)[0]
    none = run_reharmonize(
        pack, tiny_sdxl, decoded, fg0_dx=8, preset="custom", p_start=1.0, p_end=1.0, seed=9
    )[0]
    assert torch.equal(custom.latents["blended"], none.latents["blended"])  # nothing sampled: no seed


def test_save_layers_writes_the_effects_layer(comfy_host, pack, tiny_sdxl, decoded, tmp_path):
    psd_tools = pytest.importorskip("psd_tools", reason='optional: pip install "psd-tools>=1.14.3,<2"')
    moved = run_reharmonize(pack, tiny_sdxl, decoded, fg0_dx=8)[0]
    run_node(
        pack.node("LayerFusionSaveLayers"), bundle=moved, filename_prefix=f"{tmp_path.name}/m", save_psd=True
    )
    folder = Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name
    assert "m_00001_effects.png" in os.listdir(folder)
    with Image.open(folder / "m_00001_effects.png") as image:
        assert image.mode == "RGBA"
        saved = np.asarray(image)
    assert np.array_equal(
        saved[..., 3], np.clip(moved.images["effects"][0, ..., 3].numpy() * 255, 0, 255).astype(np.uint8)
    )
    psd = psd_tools.PSDImage.open(folder / "m_00001_layers.psd")
    assert [layer.name for layer in psd] == ["background", "effects", "chair", "cat", "blended"]


def test_bad_inputs_are_refused_by_name(pack, tiny_sdxl, decoded):
    with pytest.raises(ValueError, match=r"fg0_dx/fg0_dy: the layer would lie fully off the 64x64 canvas"):
        run_reharmonize(pack, tiny_sdxl, decoded, fg0_dx=200)
    with pytest.raises(ValueError, match=r"fg1_scale: expected a finite scale > 0"):
        run_reharmonize(pack, tiny_sdxl, decoded, fg1_scale=0.0)
    with pytest.raises(
        ValueError, match=r"layers: item 1 is named 'dog', which names no layer of the bundle"
    ):
        run_reharmonize(pack, tiny_sdxl, decoded, layers={"layers": [{"name": "dog"}]})
    with pytest.raises(ValueError, match=r"p_start/p_end: expected 0 <= p_start <= p_end <= 1"):
        run_reharmonize(pack, tiny_sdxl, decoded, preset="custom", p_start=0.7, p_end=0.5)
    with pytest.raises(ValueError, match=r"preset: expected one of default, stronger_shadows"):
        run_reharmonize(pack, tiny_sdxl, decoded, preset="strong")
    undecoded = decoded.with_images({})
    with pytest.raises(ValueError, match=r"bundle: expected a decoded layer bundle"):
        run_reharmonize(pack, tiny_sdxl, undecoded)
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"bundle: expected a bundle with kept latents"):
        run_reharmonize(pack, tiny_sdxl, replace(decoded, kept={}, kept_sigma=None))


def test_a_run_that_kept_nothing_gives_a_bundle_re_harmonise_refuses(pack, tiny_sdxl):
    bundle = sampled(pack, tiny_sdxl, layout_options=LayoutOptions(keep_percent=1.0))
    assert bundle.kept == {} and bundle.kept_sigma is None
    images = {k: torch.zeros(1, SIZE, SIZE, 4 if k == "fg0" else 3) for k in ("fg0", "bg", "blended")}
    with pytest.raises(
        ValueError, match=r"bundle: expected a bundle with kept latents .* keep_percent below 1"
    ):
        run_reharmonize(pack, tiny_sdxl, bundle.with_images(images))


def sampled(pack, model, images: int = 1, **settings):
    clip = TinyCLIP()
    chain = run_node(
        pack.node("LayerFusionLayerPrompt"), clip=clip, text="a", name="a", x=0, y=0, width=0, height=0
    ).result[0]
    bundle, _ = run_node(
        pack.node("LayerFusionLayersSampler"), model=model, fg_weights=None, layers=chain, bg=make_cond(2),
        negative=make_cond(4), latent_image=make_latent(images, SIZE // 8, SIZE // 8), shared_noise=True,
        **{**SETTINGS, **settings},
    ).result  # fmt: skip
    return bundle


def test_a_run_whose_sampler_hides_its_state_keeps_nothing_and_is_not_re_harmonised(pack, tiny_sdxl):
    bundle = sampled(pack, tiny_sdxl, sampler_name="dpm_adaptive")  # more steps than the schedule
    assert bundle.kept == {}
    images = {k: torch.zeros(1, SIZE, SIZE, 4 if k == "fg0" else 3) for k in ("fg0", "bg", "blended")}
    with pytest.raises(ValueError, match=r"bundle \(its run's sampler_name\): dpm_adaptive steps on its own"):
        run_reharmonize(pack, tiny_sdxl, bundle.with_images(images))


def test_each_image_of_a_batch_moves_about_its_own_layer(pack, tiny_sdxl):
    bundle = sampled(pack, tiny_sdxl, images=2)
    fg = torch.zeros(2, SIZE, SIZE, 4)
    fg[0, 8:24, 8:24] = 1.0  # image 0: the layer at the top left, image 1: bottom right
    fg[1, 40:56, 40:56] = 1.0
    images = {"fg0": fg, "bg": torch.rand(2, SIZE, SIZE, 3), "blended": torch.rand(2, SIZE, SIZE, 3)}
    moved = run_reharmonize(pack, tiny_sdxl, bundle.with_images(images), fg0_dx=8, fg0_flip_h=True)[0]
    assert moved.num_images == 2 and moved.latents["blended"].shape[0] == 2
    assert torch.equal(moved.images["fg0"][0, 8:24, 16:32], fg[0, 8:24, 8:24])  # flipped in place, moved
    assert torch.equal(moved.images["fg0"][1, 40:56, 48:64], fg[1, 40:56, 40:56])
    assert torch.equal(moved.images["bg"], images["bg"])
