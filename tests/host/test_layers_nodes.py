"""The transparent decoder, composite and save nodes in a real ComfyUI (loaded through
ComfyUI's own loader), with a real-size decoder of random weights in a temporary
models/layer_model/ folder and small images."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from support.pack_loading import run_node

from layerfusion_core.files.known import DEFAULT_DECODER_FILE
from layerfusion_core.models.transparent_vae import expected_state_dict_shapes

DIFFUSERS_DECODER = "ld_diffusers_sdxl_vae_transparent_decoder.safetensors"
SD15_NAME = "layer_sd15_vae_transparent_decoder.safetensors"
BROKEN_NAME = "broken_decoder.safetensors"
SIZE = 64  # image side in pixels (latent 8x8)


def random_decoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Real keys and shapes, fp16 as the published file; fan-in-scaled weights keep it finite."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in expected_state_dict_shapes().items():
        if key.endswith("weight") and len(shape) >= 2:
            value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = torch.ones(shape)
        else:
            value = torch.zeros(shape)
        sd[key] = value.half()
    sd["conv_out.bias"] = torch.full_like(sd["conv_out.bias"], 0.5)  # alpha away from the clamp
    return sd


@pytest.fixture(scope="module")
def layer_dir(pack, comfy_host, tmp_path_factory) -> Path:
    """A temporary layer_model folder, first in ComfyUI's search list, holding the decoder
    (random weights, real keys), the same file under an SD1.5 name, and a wrong-key file."""
    folder = tmp_path_factory.mktemp("layer_model")
    save_file(random_decoder_state_dict(), str(folder / DEFAULT_DECODER_FILE))
    os.symlink(folder / DEFAULT_DECODER_FILE, folder / SD15_NAME)
    save_file(
        {"conv_in.weight": torch.zeros(32, 3, 3, 3), "not_a_decoder.weight": torch.zeros(2)},
        str(folder / BROKEN_NAME),
    )
    fp = comfy_host.folder_paths
    paths = fp.folder_names_and_paths["layer_model"][0]
    paths.insert(0, str(folder))
    yield folder
    paths.remove(str(folder))
    fp.filename_list_cache.pop("layer_model", None)


@pytest.fixture(scope="module")
def decoder(pack, layer_dir):
    return run_node(
        pack.node("LayerFusionTransparentDecoderLoader"), decoder_name=DEFAULT_DECODER_FILE
    ).result[0]


def fg_inputs(batch: int = 1, seed: int = 0) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    latent = {"samples": torch.randn(batch, 4, SIZE // 8, SIZE // 8, generator=gen)}
    return latent, torch.rand(batch, SIZE, SIZE, 3, generator=gen)


# --- schemas (input and output names are stored in saved workflows) -------------------------

SCHEMAS = {
    "LayerFusionTransparentDecoderLoader": (["decoder_name", "auto_download"], ["decoder"]),
    "LayerFusionTransparentDecode": (
        ["decoder", "latent", "image", "tta", "sub_batch"],
        ["rgba", "rgb", "mask"],
    ),
    "LayerFusionAlphaComposite": (["foreground", "background", "x_offset", "y_offset", "scale"], ["image"]),
    "LayerFusionSaveLayers": (
        [
            "foreground",
            "background",
            "blended",
            "soft_mask",
            "hard_mask",
            "filename_prefix",
            "save_psd",
            "bundle",
        ],
        [],
    ),
}


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_schema_names_tooltips_and_object_info(pack, layer_dir, node_id):
    cls = pack.node(node_id)
    schema = cls.define_schema()
    inputs, outputs = SCHEMAS[node_id]
    assert schema.node_id == node_id and schema.category == "LayerFusion"
    assert [i.id for i in schema.inputs] == inputs
    assert all(i.tooltip for i in schema.inputs)
    info = cls.GET_NODE_INFO_V1()  # what /object_info serves
    assert list(info["output_name"]) == outputs
    assert info["output_node"] == (node_id == "LayerFusionSaveLayers")


# --- loader --------------------------------------------------------------------------------


def test_loader_lists_the_folder_and_defaults_to_the_known_decoder(pack, layer_dir):
    schema = pack.node("LayerFusionTransparentDecoderLoader").define_schema()
    combo = schema.inputs[0]
    assert combo.id == "decoder_name"
    assert {DEFAULT_DECODER_FILE, SD15_NAME, BROKEN_NAME} <= set(combo.options)
    assert combo.default == DEFAULT_DECODER_FILE
    assert all(i.tooltip for i in schema.inputs) and schema.category == "LayerFusion"


def test_loader_wraps_the_decoder_in_a_model_patcher(comfy_host, decoder):
    mm = comfy_host.model_management
    assert isinstance(decoder.patcher, comfy_host.model_patcher.ModelPatcher)
    assert decoder.name == DEFAULT_DECODER_FILE
    assert decoder.patcher.load_device == mm.vae_device()
    assert decoder.patcher.offload_device == mm.vae_offload_device()
    assert decoder.dtype == torch.float32  # ComfyUI's vae_dtype on CPU
    assert next(decoder.patcher.model.parameters()).dtype == torch.float32
    assert decoder.patcher.model_size() > 100_000_000 * 4  # real size: 104 M parameters


def test_loader_warns_for_an_sd15_file(pack, layer_dir, caplog):
    with caplog.at_level(logging.WARNING):
        run_node(pack.node("LayerFusionTransparentDecoderLoader"), decoder_name=SD15_NAME)
    assert any("SD1.5" in r.getMessage() and SD15_NAME in r.getMessage() for r in caplog.records)


def test_loader_refuses_wrong_keys_naming_file_and_key(pack, layer_dir):
    with pytest.raises(ValueError, match=BROKEN_NAME) as info:
        run_node(pack.node("LayerFusionTransparentDecoderLoader"), decoder_name=BROKEN_NAME)
    assert "not_a_decoder.weight" in str(info.value) and "missing keys" in str(info.value)


def test_loader_missing_file_says_where_to_download(pack, layer_dir):
    with pytest.raises(FileNotFoundError, match="decoder_name") as info:
        run_node(pack.node("LayerFusionTransparentDecoderLoader"), decoder_name=DIFFUSERS_DECODER)
    assert (
        f"https://huggingface.co/lllyasviel/LayerDiffuse_Diffusers/resolve/main/{DIFFUSERS_DECODER}"
        in str(info.value)
    )


# --- decode --------------------------------------------------------------------------------


def test_decode_outputs_comfyui_layouts(comfy_host, pack, decoder):
    latent, image = fg_inputs(batch=2)
    rgba, rgb, mask = run_node(
        pack.node("LayerFusionTransparentDecode"),
        decoder=decoder,
        latent=latent,
        image=image,
        tta=False,
        sub_batch=1,
    ).result
    assert (
        rgba.shape == (2, SIZE, SIZE, 4) and rgb.shape == (2, SIZE, SIZE, 3) and mask.shape == (2, SIZE, SIZE)
    )
    assert rgba.dtype == rgb.dtype == mask.dtype == torch.float32
    assert torch.equal(rgba[..., :3], rgb)
    assert torch.equal(mask, 1.0 - rgba[..., 3])  # LoadImage's convention
    assert rgba.min() >= 0 and rgba.max() <= 1 and rgba[..., 3].std() > 0
    # Channel order: the core returns (alpha, R, G, B) channels-first.
    direct = decoder.patcher.model.decode(image.movedim(-1, 1), latent["samples"], tta=False)
    torch.testing.assert_close(rgba[..., 3], direct[:, 0])
    torch.testing.assert_close(rgb, direct[:, 1:].movedim(1, -1))
    # Loaded through ComfyUI's model management, like any other model.
    assert any(lm.model is decoder.patcher for lm in comfy_host.model_management.current_loaded_models)


def test_decode_tta_reports_progress_per_pass(pack, decoder, monkeypatch):
    import comfy.utils

    # What the node reports to ComfyUI's progress bar (newer hosts throttle what reaches
    # the UI hook, so the bar's own updates are the node's behaviour under test).
    seen = []
    update = comfy.utils.ProgressBar.update_absolute

    def recording(self, value, total=None, preview=None):
        seen.append((value, self.total if total is None else total))
        return update(self, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", recording)
    latent, image = fg_inputs(batch=2, seed=1)
    rgba, _, _ = run_node(
        pack.node("LayerFusionTransparentDecode"),
        decoder=decoder,
        latent=latent,
        image=image,
        tta=True,
        sub_batch=2,
    ).result
    assert seen == [(i, 8) for i in range(1, 9)]  # one sub-batch of 2, eight TTA passes
    assert rgba.shape == (2, SIZE, SIZE, 4)


def test_decode_honours_cancel(comfy_host, pack, decoder):
    mm = comfy_host.model_management
    latent, image = fg_inputs()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(
                pack.node("LayerFusionTransparentDecode"),
                decoder=decoder,
                latent=latent,
                image=image,
                tta=True,
                sub_batch=1,
            )
    finally:
        mm.interrupt_current_processing(False)


@pytest.mark.parametrize(
    ("latent", "image", "message"),
    [
        (
            {"samples": torch.zeros(2, 4, 8, 8)},
            torch.zeros(1, 64, 64, 3),
            "batch: image has 1 images, latent 2",
        ),
        (
            {"samples": torch.zeros(1, 4, 8, 8)},
            torch.zeros(1, 64, 72, 3),
            r"image size: expected 64x64 .* got 64x72",
        ),
        (
            {"samples": torch.zeros(1, 16, 8, 8)},
            torch.zeros(1, 64, 64, 3),
            r"latent: expected an SDXL latent",
        ),
        ({"samples": torch.zeros(1, 4, 8, 8)}, torch.zeros(1, 64, 64, 4), r"image: expected an RGB IMAGE"),
    ],
)
def test_decode_validates_inputs(pack, decoder, latent, image, message):
    with pytest.raises(ValueError, match=message):
        run_node(
            pack.node("LayerFusionTransparentDecode"),
            decoder=decoder,
            latent=latent,
            image=image,
            tta=False,
            sub_batch=1,
        )


# --- composite -----------------------------------------------------------------------------


def test_composite_node(pack):
    node = pack.node("LayerFusionAlphaComposite")
    fg = torch.zeros(1, 4, 4, 4)
    fg[..., 0] = 1.0
    fg[..., 3] = 1.0
    bg = torch.zeros(2, 8, 8, 3)
    (out,) = run_node(node, foreground=fg, background=bg, x_offset=2, y_offset=-1, scale=1.0).result
    assert out.shape == (2, 8, 8, 3)
    expected = torch.zeros(8, 8)
    expected[0:3, 2:6] = 1.0
    assert torch.equal(out[1, ..., 0], expected)
    schema = node.define_schema()
    assert [i.id for i in schema.inputs] == ["foreground", "background", "x_offset", "y_offset", "scale"]
    assert all(i.tooltip for i in schema.inputs)
    with pytest.raises(ValueError, match="connect the rgba output"):
        run_node(node, foreground=bg, background=bg, x_offset=0, y_offset=0, scale=1.0)


# --- save ----------------------------------------------------------------------------------

PROMPT = {"1": {"class_type": "LayerFusionSaveLayers", "inputs": {}}}
WORKFLOW = {"nodes": [{"id": 1, "type": "LayerFusionSaveLayers"}], "links": []}


def triplet(batch: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    fg = torch.rand(batch, 16, 24, 4, generator=gen)
    fg[..., 3] = torch.linspace(0, 1, 24)  # full alpha ramp, 0 included
    return {
        "foreground": fg,
        "background": torch.rand(batch, 16, 24, 3, generator=gen),
        "blended": torch.rand(batch, 16, 24, 3, generator=gen),
    }


def as_uint8(t: torch.Tensor) -> np.ndarray:
    """SaveImage's conversion (clip, scale, truncate)."""
    return np.clip(255.0 * t.numpy(), 0, 255).astype(np.uint8)


def test_save_writes_grouped_pngs_with_alpha_metadata_and_ui(comfy_host, pack, tmp_path):
    layers = triplet()
    soft = torch.rand(2, 16, 24, generator=torch.Generator().manual_seed(4))
    prefix = f"{tmp_path.name}/layers"
    out = run_node(
        pack.node("LayerFusionSaveLayers"),
        hidden={"PROMPT": PROMPT, "EXTRA_PNGINFO": {"workflow": WORKFLOW}},
        **layers,
        soft_mask=soft,
        filename_prefix=prefix,
        save_psd=False,
    )
    folder = Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name
    names = sorted(os.listdir(folder))
    assert names == sorted(
        f"layers_{n:05}_{suffix}.png" for n in (1, 2) for suffix in ("fg", "bg", "blended", "soft_mask")
    )
    for index, n in enumerate((1, 2)):
        with Image.open(folder / f"layers_{n:05}_fg.png") as fg:
            assert fg.mode == "RGBA"
            assert np.array_equal(np.asarray(fg), as_uint8(layers["foreground"][index]))  # alpha intact
            assert json.loads(fg.text["prompt"]) == PROMPT
            assert json.loads(fg.text["workflow"]) == WORKFLOW
        with Image.open(folder / f"layers_{n:05}_bg.png") as bg:
            assert bg.mode == "RGB" and np.array_equal(np.asarray(bg), as_uint8(layers["background"][index]))
            assert json.loads(bg.text["workflow"]) == WORKFLOW
        with Image.open(folder / f"layers_{n:05}_soft_mask.png") as mask:
            assert mask.mode == "L" and np.array_equal(np.asarray(mask), as_uint8(soft[index]))
    shown = out.ui.as_dict()["images"]
    assert [r["filename"] for r in shown] == [
        f"layers_{n:05}_{s}.png" for n in (1, 2) for s in ("fg", "bg", "blended")
    ]
    assert all(r["subfolder"] == tmp_path.name and r["type"] == "output" for r in shown)
    assert out.result is None

    # The counter continues after the existing triplets; a batch of 1 is used for every triplet.
    one_bg = {**triplet(), "background": triplet(1)["background"]}
    run_node(pack.node("LayerFusionSaveLayers"), **one_bg, filename_prefix=prefix, save_psd=False)
    with Image.open(folder / "layers_00004_bg.png") as bg, Image.open(folder / "layers_00003_bg.png") as bg3:
        assert np.array_equal(np.asarray(bg), np.asarray(bg3))
        assert "prompt" not in bg.text  # no hidden inputs given: no metadata
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary files left


def test_save_psd_option(comfy_host, pack, tmp_path):
    psd_tools = pytest.importorskip("psd_tools", reason='optional: pip install "psd-tools>=1.14.3,<2"')
    layers = triplet(1)
    run_node(
        pack.node("LayerFusionSaveLayers"), **layers, filename_prefix=f"{tmp_path.name}/p", save_psd=True
    )
    folder = Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name
    assert sorted(os.listdir(folder)) == [
        "p_00001_bg.png",
        "p_00001_blended.png",
        "p_00001_fg.png",
        "p_00001_layers.psd",
    ]
    psd = psd_tools.PSDImage.open(folder / "p_00001_layers.psd")
    assert [(layer.name, layer.visible) for layer in psd] == [
        ("background", True),
        ("foreground", True),
        ("blended", False),
    ]
    assert np.array_equal(np.asarray(psd[1].topil()), as_uint8(layers["foreground"][0]))


def test_save_refuses_bad_inputs_before_writing(comfy_host, pack, tmp_path):
    node = pack.node("LayerFusionSaveLayers")
    prefix = f"{tmp_path.name}/bad"
    layers = triplet()
    with pytest.raises(ValueError, match="connect the rgba output"):
        run_node(
            node, **{**layers, "foreground": layers["background"]}, filename_prefix=prefix, save_psd=False
        )
    with pytest.raises(
        ValueError, match=r"batch: expected equal batch sizes.*got foreground 2, background 2, blended 3"
    ):
        run_node(node, **{**layers, "blended": triplet(3)["blended"]}, filename_prefix=prefix, save_psd=False)
    small = {**layers, "blended": layers["blended"][:, :8]}
    with pytest.raises(ValueError, match=r"blended: expected 24x16 \(the size of background\), got 24x8"):
        run_node(node, **small, filename_prefix=prefix, save_psd=True)
    assert not (Path(comfy_host.folder_paths.get_output_directory()) / tmp_path.name).exists()
