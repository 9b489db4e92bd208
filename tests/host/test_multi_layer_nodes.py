"""The K-layer nodes in a real ComfyUI on the tiny stand-ins: Layer Prompt chains, the Layers
Sampler (K = 1 equals the triplet sampler), Decode Layers (images, masks, the LAYERS document)
and Save Layers with a decoded bundle; and the errors each refuses with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.document_composite import composite_document
from support.fg_tiny import tiny_fg_weights
from support.pack_loading import run_node
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import TinyCLIP, random_decoder_state_dict, tiny_vae

from layerfusion_core.comfy_runtime.loaders import LoadedDecoder
from layerfusion_core.layers.bundle import LayerBundle
from layerfusion_core.models.transparent_vae import TransparentDecoder

SIZE = 64  # pixels (latent 8x8)
SETTINGS = {"seed": 7, "steps": 3, "cfg": 5.0, "scheduler": "normal", "denoise": 1.0}


@pytest.fixture(scope="module")
def clip(comfy_host) -> TinyCLIP:
    return TinyCLIP()


@pytest.fixture(scope="module")
def decoder(comfy_host) -> LoadedDecoder:
    import comfy.model_management as mm
    import comfy.model_patcher

    model = TransparentDecoder.from_state_dict(random_decoder_state_dict()).float()
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.vae_device(), offload_device=mm.vae_offload_device()
    )
    return LoadedDecoder(patcher, "random", torch.float32)


def layer(pack, clip, text="a cat", name="cat", box=(0, 0, 0, 0), **kw):
    x, y, width, height = box
    node = pack.node("LayerFusionLayerPrompt")
    return run_node(node, clip=clip, text=text, name=name, x=x, y=y, width=width, height=height, **kw).result[
        0
    ]


def sample(pack, model, chain, sampler_name="euler", images=1, **kw):
    return run_node(
        pack.node("LayerFusionLayersSampler"),
        model=model,
        fg_weights=tiny_fg_weights(model),
        layers=chain,
        bg=make_cond(2),
        negative=make_cond(4),
        latent_image=make_latent(images, SIZE // 8, SIZE // 8),
        sampler_name=sampler_name,
        shared_noise=True,
        **SETTINGS,
        **kw,
    ).result


def decode(pack, bundle, decoder, document_image=0):
    """Decode Layers as the executor runs it: in inference mode (the tiny VAE may have been
    loaded by an executor run already, its weights then inference tensors)."""
    with torch.inference_mode():
        return run_node(
            pack.node("LayerFusionDecodeLayers"),
            bundle=bundle,
            vae=tiny_vae(),
            decoder=decoder,
            tta=False,
            sub_batch=1,
            document_image=document_image,
        ).result


# --- K = 1 is the triplet ----------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral"])
def test_one_layer_equals_the_triplet_sampler(pack, tiny_sdxl, clip, sampler_name):
    chain = layer(pack, clip)
    blended = make_cond(3)
    bundle, blended_latent = sample(pack, tiny_sdxl, chain, sampler_name, images=2, blended=blended)
    fg, bg, bl, soft, hard = run_node(
        pack.node("LayerFusionTripletSampler"),
        model=tiny_sdxl,
        fg_weights=tiny_fg_weights(tiny_sdxl),
        fg=chain.layers[0].conditioning,
        bg=make_cond(2),
        blended=blended,
        negative=make_cond(4),
        latent_image=make_latent(2, SIZE // 8, SIZE // 8),
        sampler_name=sampler_name,
        shared_noise=True,
        **SETTINGS,
    ).result
    assert bundle.order == ("fg0",) and bundle.names == {"fg0": "cat"}
    # Bit-identical: the same plan, streams and noise go through the same run.
    assert torch.equal(bundle.latents["fg0"], fg["samples"])
    assert torch.equal(bundle.latents["bg"], bg["samples"])
    assert torch.equal(bundle.latents["blended"], bl["samples"])
    assert torch.equal(blended_latent["samples"], bl["samples"])
    assert torch.equal(bundle.masks["fg0"][0], soft) and torch.equal(bundle.masks["fg0"][1], hard)
    assert fg["samples"].abs().max() > 0


def test_two_layers_give_a_bundle_with_two_foregrounds(pack, tiny_sdxl, clip):
    chain = layer(pack, clip, "a chair", "chair")
    chain = layer(pack, clip, "a cat", "cat", box=(16, 8, 40, 48), layers=chain)
    assert (chain.layers[0].name, chain.layers[0].box) == ("chair", None)
    assert chain.layers[1].box.width == 40 and chain.layers[0].conditioning[0][1]["layerfusion_eos_index"] > 0
    bundle, blended_latent = sample(pack, tiny_sdxl, chain)
    assert type(bundle).__name__ == "LayerBundle" and bundle.order == ("fg0", "fg1")
    assert bundle.names == {"fg0": "chair", "fg1": "cat"}
    assert set(bundle.latents) == {"fg0", "fg1", "bg", "blended"}
    assert not torch.equal(bundle.latents["fg0"], bundle.latents["fg1"])
    assert torch.equal(blended_latent["samples"], bundle.latents["blended"])
    assert bundle.masks["fg1"][0].shape == (1, SIZE, SIZE)


# --- decode --------------------------------------------------------------------------------


def test_decode_layers_gives_rgba_layers_masks_and_a_layers_document(pack, tiny_sdxl, clip, decoder):
    chain = layer(pack, clip, "a chair", "chair")
    chain = layer(pack, clip, "a cat", "cat", layers=chain)
    bundle, _ = sample(pack, tiny_sdxl, chain, images=2)
    decoded, fgs, bg, blended, soft, hard, document = decode(pack, bundle, decoder, document_image=1)
    assert fgs.shape == (4, SIZE, SIZE, 4) and bg.shape == blended.shape == (2, SIZE, SIZE, 3)
    assert soft.shape == hard.shape == (4, SIZE, SIZE)
    for n in range(2):  # image-major: image n's layers back to front
        for k, key in enumerate(("fg0", "fg1")):
            assert torch.equal(fgs[2 * n + k], decoded.images[key][n])
            assert torch.equal(hard[2 * n + k], bundle.masks[key][1][n])
    with torch.inference_mode():
        vae_bg = tiny_vae().decode(bundle.latents["bg"])
    torch.testing.assert_close(bg, vae_bg.float().reshape(bg.shape))
    assert fgs[..., 3].std() > 0  # the transparent decoder's alpha
    assert [(i["name"], i["z_index"], i["visible"]) for i in document["layers"]] == [
        ("bg", 0, True),
        ("chair", 1, True),
        ("cat", 2, True),
        ("blended", 3, False),
    ]
    assert torch.equal(document["layers"][2]["image"][0], fgs[3]) and document["canvas"] == (SIZE, SIZE)
    out = composite_document(document)
    assert out.shape == (1, SIZE, SIZE, 4) and torch.allclose(out[..., 3], torch.ones(1))
    info = pack.node("LayerFusionDecodeLayers").GET_NODE_INFO_V1()
    assert info["output"][-1] == "LAYERS"  # core's type: Create Layered Image takes it
    with pytest.raises(ValueError, match=r"document_image: expected an image of the batch, 0 \.\. 1, got 2"):
        decode(pack, bundle, decoder, document_image=2)


def test_decode_layers_honours_cancel(comfy_host, pack, tiny_sdxl, clip, decoder):
    bundle = sample(pack, tiny_sdxl, layer(pack, clip))[0]
    mm = comfy_host.model_management
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            decode(pack, bundle, decoder)
    finally:
        mm.interrupt_current_processing(False)


# --- save ----------------------------------------------------------------------------------


def synthetic_bundle() -> LayerBundle:
    gen = torch.Generator().manual_seed(5)
    order = ("fg0", "fg1")
    images = {k: torch.rand(1, 16, 24, 4, generator=gen) for k in order}
    images.update({k: torch.rand(1, 16, 24, 3, generator=gen) for k in ("bg", "blended")})
    masks = {k: (torch.rand(1, 16, 24, generator=gen), torch.rand(1, 16, 24, generator=gen)) for k in order}
    latents = {k: torch.zeros(1, 4, 2, 3) for k in (*order, "bg", "blended")}
    return LayerBundle(
        order, {"fg0": "a chair", "fg1": "cat"}, latents, masks, {}, None, {}, None, None
    ).with_images(images)


def test_save_layers_writes_every_layer_of_a_bundle(comfy_host, pack, tmp_path):
    psd_tools = pytest.importorskip("psd_tools", reason='optional: pip install "psd-tools>=1.14.3,<2"')
    bundle = synthetic_bundle()
    out = run_node(
        pack.node("LayerFusionSaveLayers"), bundle=bundle, filename_prefix=f"{tmp_path.name}/k", save_psd=True
    )
    folder = Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name
    stems = ["fg0_a_chair", "fg1_cat"]
    masks = [f"{s}_{m}_mask" for s in stems for m in ("soft", "hard")]
    assert sorted(os.listdir(folder)) == sorted(
        [f"k_00001_{s}.png" for s in (*stems, "bg", "blended", *masks)] + ["k_00001_layers.psd"]
    )
    for stem, key in zip(stems, bundle.order, strict=True):
        with Image.open(folder / f"k_00001_{stem}.png") as image:
            assert image.mode == "RGBA"
            expected = np.clip(255.0 * bundle.images[key][0].numpy(), 0, 255).astype(np.uint8)
            assert np.array_equal(np.asarray(image), expected)
    shown = [r["filename"] for r in out.ui.as_dict()["images"]]
    assert shown == [f"k_00001_{s}.png" for s in (*stems, "bg", "blended")]
    psd = psd_tools.PSDImage.open(folder / "k_00001_layers.psd")
    assert [(lay.name, lay.visible) for lay in psd] == [
        ("background", True),
        ("a chair", True),
        ("cat", True),
        ("blended", False),
    ]


def test_save_layers_refuses_mixed_or_missing_inputs(comfy_host, pack, tmp_path):
    node, prefix = pack.node("LayerFusionSaveLayers"), f"{tmp_path.name}/bad"
    bundle = synthetic_bundle()
    with pytest.raises(ValueError, match="foreground: not used when bundle is connected"):
        run_node(node, bundle=bundle, foreground=bundle.images["fg0"], filename_prefix=prefix, save_psd=False)
    with pytest.raises(
        ValueError, match=r"bundle: expected a decoded layer bundle .* got a bundle without images"
    ):
        run_node(node, bundle=bundle.with_images({}), filename_prefix=prefix, save_psd=False)
    with pytest.raises(ValueError, match="foreground: expected an IMAGE, got nothing"):
        run_node(node, filename_prefix=prefix, save_psd=False)
    assert not (Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name).exists()


# --- errors name the input and what was expected -------------------------------------------


class WideCLIP(TinyCLIP):
    """A CLIP of another width (96 channels instead of the tiny model's 64)."""

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        cond, extra = super().encode_from_tokens_scheduled(tokens)[0]
        return [[torch.cat((cond, cond[..., :32]), dim=-1), extra]]


def test_layer_prompt_refusals(pack, clip):
    chain = layer(pack, clip, name="l0")
    with pytest.raises(ValueError, match="text: expected the layer's prompt, got an empty text"):
        layer(pack, clip, text="  \n", layers=chain)
    with pytest.raises(ValueError, match="name: 'l0' is already a layer of this chain"):
        layer(pack, clip, name="l0", layers=chain)
    with pytest.raises(
        ValueError, match=r"width: expected a box side of at least 8 pixels.*got width 0, height 16"
    ):
        layer(pack, clip, name="l1", box=(0, 0, 0, 16), layers=chain)
    with pytest.raises(ValueError, match="mask: a layer takes a box or a mask, not both"):
        layer(pack, clip, name="l1", box=(0, 0, 16, 16), mask=torch.ones(1, SIZE, SIZE), layers=chain)
    with pytest.raises(ValueError, match="mask: expected one mask \\(a batch of 1\\), got a batch of 2"):
        layer(pack, clip, name="l1", mask=torch.ones(2, SIZE, SIZE), layers=chain)
    with pytest.raises(ValueError, match=r"layers: the layer prompts come from CLIPs of different widths"):
        layer(pack, WideCLIP(), name="wide", layers=chain)
    for index in range(1, 4):
        chain = layer(pack, clip, name=f"l{index}", layers=chain)
    with pytest.raises(ValueError, match="layers: at most 4 foreground layers, this would be the 5th"):
        layer(pack, clip, name="l4", layers=chain)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"box": (32, 32, 40, 40)}, r"layer 'cat' box: \(32, 32, 40x40\) is not inside the 64x64 image"),
        (
            {"box": (0, 0, 4, 16)},
            r"layer 'cat' box: expected at least 8x8 pixels \(one latent cell\), got 4x16",
        ),
        (
            {"mask": torch.ones(1, 32, 32)},
            r"layer 'cat' mask: expected a MASK of the image's size 64x64, got \[32, 32\]",
        ),
    ],
)
def test_the_sampler_checks_boxes_and_masks_against_the_image(pack, tiny_sdxl, clip, kw, message):
    chain = layer(pack, clip, "a chair", "chair")
    chain = layer(pack, clip, layers=chain, **kw)
    with pytest.raises(ValueError, match=message):
        sample(pack, tiny_sdxl, chain)


def test_the_sampler_refuses_something_else_than_a_chain(pack, tiny_sdxl):
    with pytest.raises(
        ValueError, match="layers: expected a chain of LayerFusion Layer Prompt nodes, got list"
    ):
        sample(pack, tiny_sdxl, make_cond(1))


def test_a_layer_with_a_box_carries_the_empty_prompt_for_the_couple(pack, clip):
    boxed = layer(pack, clip, box=(0, 0, 64, 64)).layers[-1]
    plain = layer(pack, clip).layers[-1]
    assert plain.empty is None
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    assert torch.equal(boxed.empty[0][0], empty[0][0])


def test_layout_options_reach_the_run_and_refuse_non_finite_values(pack, tiny_sdxl, clip):
    node = pack.node("LayerFusionLayoutOptions")
    (options,) = run_node(node, per_layer_noise=False, couple_end_percent=0.5, paste_end_percent=0.0).result
    assert (options.per_layer_noise, options.couple_end_percent, options.paste_end_percent) == (
        False,
        0.5,
        0.0,
    )
    with pytest.raises(ValueError, match="couple_end_percent: expected a finite number"):
        run_node(node, per_layer_noise=True, couple_end_percent=float("nan"), paste_end_percent=0.1)
    chain = layer(pack, clip, text="a dog", name="dog", layers=layer(pack, clip))
    (defaults,) = run_node(node, per_layer_noise=True, couple_end_percent=0.3, paste_end_percent=0.15).result
    same_noise, _ = sample(pack, tiny_sdxl, chain, layout_options=options)
    unset, _ = sample(pack, tiny_sdxl, chain)
    default, _ = sample(pack, tiny_sdxl, chain, layout_options=defaults)
    assert all(torch.equal(default.latents[k], unset.latents[k]) for k in unset.latents)
    assert not torch.equal(same_noise.latents["fg1"], unset.latents["fg1"])  # seed, not seed + 1
