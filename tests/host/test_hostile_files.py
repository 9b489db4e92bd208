"""Hostile model files and option values through the loader and option nodes: every bad
file or number is refused at load with the input, the file and the key named."""

import math
import pickle

import pytest
import torch
from safetensors.torch import save_file
from support.pack_loading import run_node
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import random_decoder_state_dict

from layerfusion_core.architectures.sdxl import SDXL

FG_LOADER = "LayerFusionForegroundLoader"
DECODER_LOADER = "LayerFusionTransparentDecoderLoader"
FG_INPUTS = {"strength": 1.0, "application": "on_the_fly"}


def sdxl_lora(dtype=torch.float16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for p in SDXL.projections:  # rank 1: the real keys and shapes, small
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = torch.randn(p.shape[0], 1, generator=g).to(
            dtype
        )
        sd[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = torch.randn(1, p.shape[1], generator=g).to(
            dtype
        )
    return sd


FIRST_KEY = f"diffusion_model.{SDXL.projections[3].ldm_path}.weight::lora::0"


def load(pack, node, **inputs):
    return run_node(pack.node(node), **inputs).result[0]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_fg_loader_refuses_non_finite_weights_naming_file_and_key(pack, layer_model_dir, value):
    sd = sdxl_lora()
    sd[FIRST_KEY][5, 0] = value
    save_file(sd, layer_model_dir / "nan_attn.safetensors")
    with pytest.raises(ValueError) as err:
        load(pack, FG_LOADER, weights_name="nan_attn.safetensors", **FG_INPUTS)
    message = str(err.value)
    assert message.startswith("weights_name: nan_attn.safetensors") and FIRST_KEY in message
    assert "NaN or Inf" in message


def test_fg_loader_refuses_integer_tensors(pack, layer_model_dir):
    sd = sdxl_lora()
    sd[FIRST_KEY] = (sd[FIRST_KEY] * 10).to(torch.int16)
    save_file(sd, layer_model_dir / "int_attn.safetensors")
    with pytest.raises(ValueError, match=rf"weights_name: int_attn.safetensors .*{FIRST_KEY}.*torch.int16"):
        load(pack, FG_LOADER, weights_name="int_attn.safetensors", **FG_INPUTS)


def test_decoder_loader_refuses_non_finite_weights(pack, layer_model_dir):
    sd = random_decoder_state_dict()
    sd["conv_out.bias"][0] = math.nan
    save_file(sd, layer_model_dir / "nan_decoder.safetensors")
    with pytest.raises(
        ValueError, match=r"decoder_name: nan_decoder.safetensors .*'conv_out.bias'.*NaN or Inf"
    ):
        load(pack, DECODER_LOADER, decoder_name="nan_decoder.safetensors")


def corrupt_files(folder):
    good = folder / "good.safetensors"
    save_file({"conv_in.weight": torch.ones(8, 8)}, good)
    data = good.read_bytes()
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "truncated.safetensors").write_bytes(data[: len(data) - 40])
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 300)
    with open(folder / "pickled.safetensors", "wb") as fp:
        pickle.dump({"conv_in.weight": [1.0, 2.0]}, fp, protocol=2)
    torch.save({"conv_in.weight": torch.ones(2)}, folder / "torchsave.safetensors")
    return ["empty", "truncated", "garbage", "pickled", "torchsave"]


@pytest.mark.parametrize("node,input_name", [(FG_LOADER, "weights_name"), (DECODER_LOADER, "decoder_name")])
def test_corrupt_files_name_the_input_and_the_file(pack, layer_model_dir, node, input_name):
    extra = FG_INPUTS if node == FG_LOADER else {}
    for stem in corrupt_files(layer_model_dir):
        name = f"{stem}.safetensors"
        with pytest.raises(ValueError) as err:
            load(pack, node, **{input_name: name}, **extra)
        message = str(err.value)
        assert (
            message.startswith(f"{input_name}: {name} (") and "is not a usable .safetensors file" in message
        )
        assert str(layer_model_dir / name) in message


def test_missing_file_messages_read_as_sentences(pack, layer_model_dir):
    with pytest.raises(FileNotFoundError) as unknown:
        load(pack, FG_LOADER, weights_name="my_own_attn.safetensors", **FG_INPUTS)
    assert "and put it in that folder" not in str(unknown.value)
    assert str(unknown.value).endswith("put the file in that folder.")
    with pytest.raises(FileNotFoundError) as known:
        load(pack, DECODER_LOADER, decoder_name="ld_diffusers_sdxl_vae_transparent_decoder.safetensors")
    message = str(known.value)
    assert ". Download it from https://huggingface.co/" in message
    assert message.endswith("and put it in that folder, or turn auto_download on.")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_option_nodes_refuse_non_finite_numbers(pack, layer_model_dir, value):
    blender = pack.node("LayerFusionMaskBlender")
    defaults = {
        "coefficient": 10.0, "threshold": 0.5, "mode": "generative", "layers": "all", "self_attention": True,
        "cross_attention": True, "start_percent": 0.0, "end_percent": 1.0, "sharing": "masked",
    }  # fmt: skip
    for name in ("coefficient", "threshold"):
        with pytest.raises(ValueError, match=f"LayerFusionMaskBlender: {name}: expected a finite number"):
            run_node(blender, **{**defaults, name: value})
    save_file(sdxl_lora(), layer_model_dir / "ok_attn.safetensors")
    with pytest.raises(ValueError, match="strength: expected a finite number"):
        load(pack, FG_LOADER, weights_name="ok_attn.safetensors", strength=value, application="on_the_fly")


@pytest.mark.parametrize("name", ["cfg", "denoise"])
def test_triplet_sampler_refuses_non_finite_cfg_and_denoise(pack, tiny_sdxl, name):
    from support.fg_tiny import tiny_fg_weights

    inputs = {
        "model": tiny_sdxl, "fg_weights": tiny_fg_weights(tiny_sdxl), "fg": make_cond(1), "bg": make_cond(2),
        "blended": make_cond(3), "negative": make_cond(4), "latent_image": make_latent(1), "seed": 0,
        "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match=f"{name}: expected a finite number, got nan"):
        run_node(pack.node("LayerFusionTripletSampler"), **{**inputs, name: math.nan})
