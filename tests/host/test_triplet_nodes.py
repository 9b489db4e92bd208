"""The encode, loader, option and sampler nodes, loaded through ComfyUI's own loader."""

import logging

import pytest
import torch
from safetensors.torch import save_file
from support.fg_tiny import tiny_fg_weights
from support.pack_loading import run_node
from support.tiny_sdxl import make_cond, make_latent

from layerfusion_core.architectures.sdxl import SDXL

NODE_IDS = {
    "LayerFusionTextEncode",
    "LayerFusionForegroundLoader",
    "LayerFusionPriorExtractor",
    "LayerFusionMaskBlender",
    "LayerFusionTripletSampler",
    "LayerFusionTransparentDecoderLoader",
    "LayerFusionTransparentDecode",
    "LayerFusionAlphaComposite",
    "LayerFusionSaveLayers",
}


def result(output):
    return output.result


def test_pack_registers_every_node(pack):
    assert NODE_IDS <= set(pack.node_ids)


class TokenizingCLIP:
    """A CLIP with ComfyUI's real SDXL tokenizer (no weights needed) and a stand-in encoder
    that returns one random 2048-wide token per context position."""

    def __init__(self):
        import comfy.sdxl_clip

        self.tokenizer = comfy.sdxl_clip.SDXLTokenizer()

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)

    def encode_from_tokens_scheduled(self, tokens):
        windows = len(tokens["g"])
        return [[torch.randn(1, 77 * windows, 2048), {"pooled_output": torch.randn(1, 1280)}]]


def test_text_encode_records_the_global_eos_index(pack):
    node = pack.node("LayerFusionTextEncode")
    clip = TokenizingCLIP()
    fg, bg, _ = result(run_node(node, clip=clip, fg_text="a red apple", bg_text="a wooden table"))
    # <start> a red apple <end>: EOS at position 4 of the only window
    assert fg[0][1]["layerfusion_eos_index"] == 4
    assert "layerfusion_eos_index" not in bg[0][1]
    long_text = ", ".join(["a very detailed red apple"] * 20)  # > 75 tokens: several windows
    tokens = clip.tokenize(long_text)["g"]
    assert len(tokens) >= 2
    (fg_long, _, _) = result(run_node(node, clip=clip, fg_text=long_text, bg_text="table"))
    eos = fg_long[0][1]["layerfusion_eos_index"]
    window, position = divmod(eos, 77)
    assert window == len(tokens) - 1 and tokens[window][position][0] == 49407
    assert all(t[0] != 49407 for t in tokens[window][1:position])
    assert fg_long[0][0].shape[1] > eos


def test_text_encode_default_blended_prompt(pack):
    seen = []

    class Recording(TokenizingCLIP):
        def tokenize(self, text):
            seen.append(text)
            return super().tokenize(text)

    run_node(pack.node("LayerFusionTextEncode"), clip=Recording(), fg_text="a cat", bg_text="a sofa")
    assert seen == ["a cat", "a sofa", "a cat, a sofa"]
    with pytest.raises(ValueError, match="fg_text"):
        run_node(pack.node("LayerFusionTextEncode"), clip=Recording(), fg_text="  ", bg_text="a sofa")


def test_foreground_loader_reads_an_sdxl_lora_and_refuses_bad_files(pack, layer_model_dir):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for p in SDXL.projections:  # rank 1 keeps the real key set and shapes small
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = torch.randn(p.shape[0], 1, generator=g).half()
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = torch.randn(1, p.shape[1], generator=g).half()
    save_file(sd, layer_model_dir / "layer_xl_transparent_attn.safetensors")
    node = pack.node("LayerFusionForegroundLoader")
    (weights,) = result(
        run_node(
            node, weights_name="layer_xl_transparent_attn.safetensors", strength=0.5, application="merged"
        )
    )
    assert len(weights.deltas) == 560 and weights.strength == 0.5 and weights.application == "merged"

    sd["diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight::lora::0"] = torch.zeros(
        1, 1
    )
    save_file(sd, layer_model_dir / "broken_attn.safetensors")
    with pytest.raises(ValueError, match=r"weights_name: broken_attn.safetensors .*ff\.net\.0\.proj"):
        run_node(node, weights_name="broken_attn.safetensors", strength=1.0, application="on_the_fly")
    with pytest.raises(ValueError, match="conv-injection"):
        run_node(
            node, weights_name="layer_xl_transparent_conv.safetensors", strength=1.0, application="on_the_fly"
        )
    with pytest.raises(ValueError, match=r"Stable Diffusion 1\.5"):
        run_node(
            node,
            weights_name="layer_sd15_transparent_attn.safetensors",
            strength=1.0,
            application="on_the_fly",
        )
    with pytest.raises(
        FileNotFoundError,
        match=r"ld_diffusers_sdxl_attn.safetensors was not found.*huggingface.co/lllyasviel",
    ):
        run_node(
            node, weights_name="ld_diffusers_sdxl_attn.safetensors", strength=1.0, application="on_the_fly"
        )


def test_option_nodes_build_options_and_name_bad_values(pack):
    (prior,) = result(run_node(
        pack.node("LayerFusionPriorExtractor"), structure_layer="output.4.1", formula="negative_entropy",
        orientation="auto", timing="previous", content_timing="previous", auto_vote_evaluations=2, chunk_size=256,
    ))  # fmt: skip
    assert (
        prior.timing == "previous" and prior.orientation == "auto" and prior.structure_layer == "output.4.1"
    )
    blend_inputs = dict(
        coefficient=8.0, threshold=0.4, mode="generative", layers="middle,output", self_attention=True,
        cross_attention=False, start_percent=0.1, end_percent=0.9, sharing="bidirectional",
    )  # fmt: skip
    (blend,) = result(run_node(pack.node("LayerFusionMaskBlender"), **blend_inputs))
    assert blend.layers.contains(("middle", 0, 0)) and not blend.layers.contains(("input", 4, 0))
    assert blend.sharing == "bidirectional" and blend.layers.cross_attention is False
    with pytest.raises(ValueError, match="LayerFusionMaskBlender: layers"):
        run_node(pack.node("LayerFusionMaskBlender"), **{**blend_inputs, "layers": "decoder"})
    with pytest.raises(ValueError, match="start_percent"):
        run_node(pack.node("LayerFusionMaskBlender"), **{**blend_inputs, "start_percent": 0.95})


def sampler_inputs(model, **overrides):
    fg, bg, bl, neg = (make_cond(s) for s in (1, 2, 3, 4))
    fg[0][1]["layerfusion_eos_index"] = 5
    inputs = dict(
        model=model, fg_weights=tiny_fg_weights(model), fg=fg, bg=bg, blended=bl, negative=neg,
        latent_image=make_latent(2), seed=3, steps=2, cfg=6.0, sampler_name="euler_ancestral",
        scheduler="karras", denoise=1.0,
    )  # fmt: skip
    inputs.update(overrides)
    return inputs


def test_sampler_node_gives_three_latents_and_masks(pack, tiny_sdxl):
    node = pack.node("LayerFusionTripletSampler")
    (blend,) = result(run_node(
        pack.node("LayerFusionMaskBlender"), coefficient=10.0, threshold=0.5, mode="generative", layers="all",
        self_attention=True, cross_attention=True, start_percent=0.0, end_percent=1.0, sharing="masked",
    ))  # fmt: skip
    out = result(run_node(node, **sampler_inputs(tiny_sdxl), blend_options=blend))
    fg, bg, blended, soft, hard = out
    for latent in (fg, bg, blended):
        assert latent["samples"].shape == (2, 4, 16, 16) and torch.isfinite(latent["samples"]).all()
    assert soft.shape == hard.shape == (2, 128, 128)
    assert 0 <= soft.min() and soft.max() <= 1 and 0 <= hard.min() and hard.max() <= 1
    assert not torch.equal(fg["samples"], bg["samples"])


def test_sampler_node_warns_without_eos_index(pack, tiny_sdxl, caplog):
    inputs = sampler_inputs(tiny_sdxl, latent_image=make_latent(1))
    inputs["fg"] = make_cond(1)  # as a plain CLIPTextEncode gives
    with caplog.at_level(logging.WARNING):
        out = result(run_node(pack.node("LayerFusionTripletSampler"), **inputs))
    assert "no EOS index" in caplog.text
    assert torch.isfinite(out[2]["samples"]).all()


def test_foreground_loader_auto_download_from_a_local_server(
    pack, layer_model_dir, tmp_path_factory, monkeypatch
):
    """The loader's auto_download fetches a missing known file, verified, into layer_model."""
    import hashlib
    import http.server
    import sys
    import threading

    g = torch.Generator().manual_seed(0)
    sd = {}
    for p in SDXL.projections:
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = torch.randn(p.shape[0], 1, generator=g).half()
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = torch.randn(1, p.shape[1], generator=g).half()
    served = tmp_path_factory.mktemp("served")
    save_file(sd, served / "layer_xl_transparent_attn.safetensors")
    digest = hashlib.sha256((served / "layer_xl_transparent_attn.safetensors").read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        downloads = next(
            m
            for n, m in sys.modules.items()
            if n.endswith("comfy_runtime.loaders") and n != "layerfusion_core.comfy_runtime.loaders"
        )
        base = f"http://127.0.0.1:{httpd.server_address[1]}/"
        monkeypatch.setattr(downloads, "download_url", lambda name: base + name)
        monkeypatch.setattr(downloads, "hub_file_info", lambda url, *a, **k: (digest, None))
        monkeypatch.setattr(downloads, "layer_model_dir", lambda: str(layer_model_dir))
        node = pack.node("LayerFusionForegroundLoader")
        name = "layer_xl_transparent_attn.safetensors"
        with pytest.raises(FileNotFoundError, match="was not found"):
            run_node(node, weights_name=name, strength=1.0, application="on_the_fly")
        (weights,) = result(
            run_node(node, weights_name=name, strength=1.0, application="on_the_fly", auto_download=True)
        )
        assert len(weights.deltas) == 560
        assert hashlib.sha256((layer_model_dir / name).read_bytes()).hexdigest() == digest
        assert not [p for p in layer_model_dir.iterdir() if p.name != name]  # no partial files left
    finally:
        httpd.shutdown()
