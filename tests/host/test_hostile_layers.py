"""Hostile inputs to the multi-layer nodes in a real ComfyUI, on the tiny stand-ins: seeds at
the widget's maximum, reserved or overlong layer names, a re-harmonised bundle given to Decode
Layers, Re-harmonize with another model or VAE, prompt lengths that cannot be batched, an
empty region, refusals that name the right input, and a latent picked from a batch."""

from __future__ import annotations

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.pack_loading import run_node
from support.reharmonize_node import run_reharmonize
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import TinyCLIP, random_decoder_state_dict, tiny_vae
from support.tiny_variants import build_tiny_sd15, build_tiny_sdxl_inpaint, tiny_vae_with_latent_channels

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from layerfusion_core.comfy_runtime.decomposing import decompose
from layerfusion_core.comfy_runtime.layer_decoding import vae_decode
from layerfusion_core.comfy_runtime.loaders import LoadedDecoder
from layerfusion_core.layers.prompts import LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.method.streams import StreamRole
from layerfusion_core.models.transparent_vae import TransparentDecoder
from layerfusion_core.options import LayerFusionOptions, NoiseOptions

SIZE = 64  # pixels (latent 8 x 8)
MAX_SEED = 2**64 - 1  # the seed widget's maximum
SETTINGS = {"steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def chain_of(pack, names=("chair", "cat"), **kw):
    chain, clip = None, TinyCLIP()
    for name in names:
        extra = {} if chain is None else {"layers": chain}
        chain = run_node(
            pack.node("LayerFusionLayerPrompt"), clip=clip, text=f"a {name}", name=name, x=0, y=0, width=0,
            height=0, **extra, **kw,
        ).result[0]  # fmt: skip
    return chain


def sample(pack, model, chain, seed=7, bg=None, sampler_name="euler"):
    return run_node(
        pack.node("LayerFusionLayersSampler"), model=model, fg_weights=tiny_fg_weights(model), layers=chain,
        bg=bg if bg is not None else make_cond(2), negative=make_cond(4),
        latent_image=make_latent(1, SIZE // 8, SIZE // 8), shared_noise=True, seed=seed,
        **{**SETTINGS, "steps": 4, "sampler_name": sampler_name},
    ).result  # fmt: skip


def with_images(bundle):
    """The bundle decoded cheaply: BG and BLENDED through the tiny VAE, random RGBA layers."""
    generator = torch.Generator().manual_seed(3)
    images = {key: torch.rand(1, SIZE, SIZE, 4, generator=generator) for key in bundle.order}
    with torch.inference_mode():
        images.update({key: vae_decode(tiny_vae(), bundle.latents[key]) for key in ("bg", "blended")})
    return bundle.with_images(images)


@pytest.fixture(scope="module")
def decoded(comfy_host, pack, tiny_sdxl):
    bundle, _ = sample(pack, tiny_sdxl, chain_of(pack))
    return with_images(bundle)


# --- seeds at the widget's maximum ------------------------------------------------------------


def test_the_largest_seed_runs_every_multi_layer_node(pack, tiny_sdxl, decoded):
    """Layer k draws from seed + k, wrapped: at 2^64 - 1 layer 1 draws from seed 0."""
    bundle, _ = sample(pack, tiny_sdxl, chain_of(pack), seed=MAX_SEED, sampler_name="euler_ancestral")
    assert all(torch.isfinite(z).all() for z in bundle.latents.values())
    moved = run_reharmonize(pack, tiny_sdxl, decoded, seed=MAX_SEED)[0]
    assert torch.isfinite(moved.latents["blended"]).all()
    moved = run_reharmonize(pack, tiny_sdxl, decoded, seed=MAX_SEED, fg1_scale=0.5)[0]
    assert torch.isfinite(moved.latents["fg1"]).all()
    with torch.inference_mode():
        decomposed = decompose(
            tiny_sdxl, tiny_fg_weights(tiny_sdxl), tiny_vae(), torch.rand(1, SIZE, SIZE, 3),
            LayeredPrompts(
                LayerChain().add(LayerPrompt(make_cond(1), "a", "a")).add(LayerPrompt(make_cond(5), "b", "b")),
                make_cond(2), make_cond(3), make_cond(4),
            ),
            SamplerSettings(MAX_SEED, 3, 5.0, "euler_ancestral", "normal"), LayerFusionOptions(),
        )  # fmt: skip
    assert torch.isfinite(decomposed.latents["fg1"]).all()


def test_layer_seeds_wrap_into_the_seed_range(comfy_host):
    """FG layer k draws from seed + k modulo 2^64: at 2^64 - 1, layer 1 from 0, layer 2 from 1;
    BG and BLENDED from the seed itself."""
    from layerfusion_core.comfy_runtime.sampling import stream_seeds
    from layerfusion_core.method.streams import StreamSet

    seeds = stream_seeds(StreamSet(foregrounds=3, blended=True), MAX_SEED, per_layer=True)
    assert seeds == [MAX_SEED, 0, 1, MAX_SEED, MAX_SEED]


# --- layer names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bg", "blended", "effects", " BG ", "Effects"])
def test_the_names_of_our_own_items_are_refused(pack, name):
    with pytest.raises(ValueError, match=r"name: '\w+' is the name of the pack's own \w+ layer"):
        chain_of(pack, names=(name,))


def test_overlong_and_control_character_names_are_refused(pack):
    assert chain_of(pack, names=("x" * 100,)).layers[0].name == "x" * 100
    with pytest.raises(ValueError, match=r"name: expected a layer name of at most 100 characters, got 1000"):
        chain_of(pack, names=("x" * 1000,))
    with pytest.raises(ValueError, match=r"name: a layer name cannot hold control characters"):
        chain_of(pack, names=("cat\nnap",))


def test_decode_layers_document_names_every_item_once(pack, tiny_sdxl):
    """Unicode names are fine (the PSD writer handles them); every item's name is its own."""
    bundle, _ = sample(pack, tiny_sdxl, chain_of(pack, names=("猫", "🐱")))
    decoder = TransparentDecoder.from_state_dict(random_decoder_state_dict()).float()
    import comfy.model_management as mm
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(decoder, mm.vae_device(), mm.vae_offload_device())
    with torch.inference_mode():
        document = run_node(
            pack.node("LayerFusionDecodeLayers"), bundle=bundle, vae=tiny_vae(),
            decoder=LoadedDecoder(patcher, "random", torch.float32), tta=False, sub_batch=1, document_image=0,
        ).result[-1]  # fmt: skip
    names = [item["name"] for item in document["layers"]]
    assert names == ["bg", "猫", "🐱", "blended"]


# --- Decode Layers and a re-harmonised bundle ---------------------------------------------------


def test_decode_layers_refuses_a_reharmonised_bundle(pack, tiny_sdxl, decoded):
    moved = run_reharmonize(pack, tiny_sdxl, decoded, fg1_scale=0.5)[0]
    with pytest.raises(
        ValueError, match=r"bundle: this bundle was re-harmonised: .* Re-harmonize's own outputs"
    ):
        run_node(
            pack.node("LayerFusionDecodeLayers"), bundle=moved, vae=tiny_vae(), decoder=None, tta=False,
            sub_batch=1, document_image=0,
        )  # fmt: skip


def test_sub_batch_zero_is_refused_by_name(comfy_host):
    from layerfusion_core.comfy_runtime.decoding import decode_rgba

    with pytest.raises(
        ValueError, match=r"sub_batch: expected a whole number of images of at least 1, got 0"
    ):
        decode_rgba(None, torch.zeros(1, 4, 8, 8), torch.zeros(1, 64, 64, 3), False, 0)


# --- Re-harmonize checks its model and VAE --------------------------------------------------------


def test_reharmonize_refuses_a_model_of_another_family_or_inpainting(pack, decoded):
    with pytest.raises(ValueError, match=r"model: LayerFusion needs an SDXL model .* got BaseModel"):
        run_reharmonize(pack, build_tiny_sd15(0), decoded)
    with pytest.raises(
        ValueError, match=r"model: .* got a model with 9 input channels \(an inpainting model\)"
    ):
        run_reharmonize(pack, build_tiny_sdxl_inpaint(0), decoded)


def test_reharmonize_refuses_another_sdxl_and_accepts_the_same_one_with_a_lora(
    pack, tiny_sdxl, make_tiny_sdxl, decoded
):
    with pytest.raises(ValueError, match=r"model: this is not the model the bundle was sampled with"):
        run_reharmonize(pack, make_tiny_sdxl(seed=5), decoded)
    # The same weights loaded again (another ModelPatcher), and with a LoRA on attention: accepted.
    assert run_reharmonize(pack, make_tiny_sdxl(seed=0), decoded)[0].images["effects"].shape[-1] == 4
    lora = tiny_sdxl.clone()
    key = next(k for k in lora.model_state_dict() if k.endswith("attn1.to_q.weight"))
    lora.add_patches({key: (torch.full_like(lora.model_state_dict()[key], 0.01),)}, 1.0)
    assert run_reharmonize(pack, lora, decoded)[0].images["effects"].shape[-1] == 4


def test_reharmonize_refuses_a_vae_of_another_latent_format(pack, tiny_sdxl, decoded):
    with pytest.raises(
        ValueError, match=r"vae: expected a VAE of 4-channel latents .* got one of 16 channels"
    ):
        run_reharmonize(pack, tiny_sdxl, decoded, vae=tiny_vae_with_latent_channels(16))


# --- prompt lengths that cannot be batched --------------------------------------------------------


def test_prompt_lengths_far_apart_are_refused_before_sampling(tiny_sdxl):
    fg, bg, blended = make_cond(1, tokens=77), make_cond(2, tokens=78), make_cond(3, tokens=76)
    with pytest.raises(
        ValueError,
        match=r"conditionings: the prompts' token lengths \(fg 77, bg 78, blended 76\) cannot be batched",
    ):
        sample_triplet(
            tiny_sdxl, None, RunPlan.triplet(fg, bg, blended, make_cond(4), make_latent(1), LayerFusionOptions()),
            SamplerSettings(7, 1, 5.0, "euler", "normal"),
        )  # fmt: skip


def test_a_background_prompt_of_78_tokens_is_refused_by_the_layers_sampler(pack, tiny_sdxl):
    with pytest.raises(ValueError, match=r"token lengths \(chair 77, cat 77, bg 78, blended 231\)|fg0 77"):
        sample(pack, tiny_sdxl, chain_of(pack), bg=make_cond(2, tokens=78))


def test_prompts_in_whole_windows_still_stack(tiny_sdxl):
    """77, 154 and 231 tokens (one, two and three windows) stack at 462, twice the longest."""
    fg, bg, blended = make_cond(1, tokens=77), make_cond(2, tokens=154), make_cond(3, tokens=231)
    result = sample_triplet(
        tiny_sdxl, None, RunPlan.triplet(fg, bg, blended, make_cond(4), make_latent(1), LayerFusionOptions()),
        SamplerSettings(7, 1, 5.0, "euler", "normal"),
    )  # fmt: skip
    assert torch.isfinite(result.latents[StreamRole.BLENDED]).all()


# --- empty regions, and refusals naming the right input ----------------------------------------------


def test_an_empty_mask_is_refused_by_the_layer_prompt_and_the_decomposition(pack, tiny_sdxl):
    with pytest.raises(ValueError, match=r"mask: the mask is 0 everywhere, so the layer would be empty"):
        chain_of(pack, names=("cat",), mask=torch.zeros(1, SIZE, SIZE))
    chain = LayerChain().add(LayerPrompt(make_cond(1), "a", "cat", mask=torch.zeros(SIZE, SIZE)))
    with (
        pytest.raises(ValueError, match=r"layer 'cat' mask: the mask is 0 everywhere"),
        torch.inference_mode(),
    ):
        decompose(
            tiny_sdxl, None, tiny_vae(), torch.rand(1, SIZE, SIZE, 3),
            LayeredPrompts(chain, make_cond(2), make_cond(3), make_cond(4)),
            SamplerSettings(7, 2, 5.0, "euler", "normal"), LayerFusionOptions(),
        )  # fmt: skip


def test_decompose_names_its_image_prompt(tiny_sdxl):
    image_prompt = make_cond(3)
    image_prompt[0][1]["area"] = (8, 8, 0, 0)
    chain = LayerChain().add(LayerPrompt(make_cond(1), "a", "cat"))
    with pytest.raises(ValueError, match=r"^image_prompt: cannot stack conditioning key\(s\) area"):
        decompose(
            tiny_sdxl, None, tiny_vae(), torch.rand(1, SIZE, SIZE, 3),
            LayeredPrompts(chain, make_cond(2), image_prompt, make_cond(4)),
            SamplerSettings(7, 2, 5.0, "euler", "normal"), LayerFusionOptions(),
        )  # fmt: skip


# --- a latent picked from a batch -----------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_a_latent_picked_from_a_batch_gives_that_images_layers(tiny_sdxl, shared):
    """batch_index (Latent From Batch) keeps each image's noise: image 1 of a batch of 2 equals
    the run of that one latent with batch_index [1], with shared noise on and off."""
    options = LayerFusionOptions(noise=NoiseOptions(share_initial_noise=shared, share_step_noise=shared))
    fg, bg, blended, negative = make_cond(1), make_cond(2), make_cond(3), make_cond(4)
    fg[0][1]["layerfusion_eos_index"] = 6
    settings = SamplerSettings(7, 2, 5.0, "euler", "normal")
    whole = sample_triplet(
        tiny_sdxl, None, RunPlan.triplet(fg, bg, blended, negative, make_latent(2), options), settings
    )
    picked_latent = {**make_latent(1), "batch_index": [1]}
    picked = sample_triplet(
        tiny_sdxl, None, RunPlan.triplet(fg, bg, blended, negative, picked_latent, options), settings
    )
    for role in StreamRole:
        # Equal up to float rounding (batched products of another size; no image sees another):
        # measured 3e-6 of the latents' scale here, against 1.5 with the noise of another row.
        scale = float(whole.latents[role].abs().max())
        error = float((picked.latents[role][0] - whole.latents[role][1]).abs().max())
        assert error <= 2e-5 * scale, (role, error, scale)
