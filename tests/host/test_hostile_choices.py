"""What a new user meets: the layer_model folder exists after the pack registers it, and
the loaders' lists mark known files that are not on disk and refuse them at queue time
unless auto_download is on."""

import sys

import pytest
from safetensors.torch import save_file
from support.tiny_stand_ins import random_decoder_state_dict

from layerfusion_core.files.known import DEFAULT_DECODER_FILE, DEFAULT_FG_FILE


@pytest.fixture
def empty_layer_model(comfy_host, pack, tmp_path, monkeypatch):
    """ComfyUI's models folder moved to an empty one, layer_model not registered yet."""
    fp = comfy_host.folder_paths
    monkeypatch.setattr(fp, "models_dir", str(tmp_path / "models"))
    monkeypatch.setitem(fp.folder_names_and_paths, "layer_model", ([], set()))
    del fp.folder_names_and_paths["layer_model"]
    fp.filename_list_cache.clear()
    folders = next(
        m
        for n, m in sys.modules.items()
        if n.endswith("comfy_runtime.model_folders") and n != "layerfusion_core.comfy_runtime.model_folders"
    )
    folders.register_model_folders()
    yield tmp_path / "models" / "layer_model"
    fp.filename_list_cache.clear()


def test_registering_creates_models_layer_model(empty_layer_model):
    assert empty_layer_model.is_dir()


@pytest.mark.parametrize(
    "node_id,input_name,default",
    [
        ("LayerFusionForegroundLoader", "weights_name", DEFAULT_FG_FILE),
        ("LayerFusionTransparentDecoderLoader", "decoder_name", DEFAULT_DECODER_FILE),
    ],
)
def test_absent_known_files_are_marked_and_refused_at_queue_time(
    pack, empty_layer_model, node_id, input_name, default
):
    node = pack.node(node_id)
    combo = next(i for i in node.define_schema().inputs if i.id == input_name)
    marked = f"{default} (not downloaded)"
    assert marked in combo.options and default not in combo.options and combo.default == marked
    for value in (default, marked):
        refused = node.validate_inputs(**{input_name: value})
        assert isinstance(refused, str) and refused.startswith(f"{input_name}: {default} was not found in")
        assert "turn auto_download on" in refused
        assert node.validate_inputs(**{input_name: value, "auto_download": True}) is True
    unknown = node.validate_inputs(**{input_name: "typo.safetensors", "auto_download": True})
    assert isinstance(unknown, str) and "typo.safetensors was not found" in unknown


def test_a_file_on_disk_is_listed_plainly_and_accepted(pack, empty_layer_model, comfy_host):
    save_file(random_decoder_state_dict(), str(empty_layer_model / DEFAULT_DECODER_FILE))
    comfy_host.folder_paths.filename_list_cache.clear()
    node = pack.node("LayerFusionTransparentDecoderLoader")
    combo = node.define_schema().inputs[0]
    assert combo.options[0] == DEFAULT_DECODER_FILE and combo.default == DEFAULT_DECODER_FILE
    assert node.validate_inputs(decoder_name=DEFAULT_DECODER_FILE) is True
    assert "ld_diffusers_sdxl_vae_transparent_decoder.safetensors (not downloaded)" in combo.options
