"""sdxl.py agrees with both LayerDiffuse manifests and with ComfyUI's SDXL numbering."""

from support.manifests import load_manifest

from layerfusion_core.architectures.sdxl import SDXL, layout_from_unet_config


def test_seventy_blocks_in_execution_order():
    keys = [b.key for b in SDXL.blocks]
    assert len(keys) == 70 and len(SDXL.projections) == 560
    assert keys[:4] == [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1)]
    assert keys[24] == ("middle", 0, 0)
    assert SDXL.last_block.key == ("output", 5, 1)
    widths = {b.key[:2]: (b.channels, b.heads) for b in SDXL.blocks}
    assert widths[("input", 4)] == (640, 10) and widths[("input", 8)] == (1280, 20)
    assert widths[("middle", 0)] == (1280, 20) and widths[("output", 2)] == (1280, 20)
    assert widths[("output", 3)] == (640, 10)


def test_lora_manifest_keys_and_shapes():
    manifest = load_manifest("layer_xl_transparent_attn_expected_keys.INFERRED.json")
    expected = {}
    for p in SDXL.projections:
        out_f, in_f = p.shape
        expected[f"diffusion_model.{p.ldm_path}.weight::lora::0"] = [out_f, 256]
        expected[f"diffusion_model.{p.ldm_path}.weight::lora::1"] = [256, in_f]
    assert expected == manifest


def test_diffusers_manifest_keys_shapes_and_mapping():
    manifest = load_manifest("ld_diffusers_sdxl_attn_expected_keys.INFERRED.json")
    expected = {f"{p.diffusers_path}.weight": list(p.shape) for p in SDXL.projections}
    assert expected == manifest
    for key in manifest:
        proj = SDXL.by_diffusers_path[key.removesuffix(".weight")]
        assert proj.ldm_path in SDXL.by_ldm_path


def test_diffusers_names_follow_the_documented_block_mapping():
    mapping = {
        b.ldm_path.split(".transformer_blocks")[0]: b.diffusers_path.split(".transformer_blocks")[0]
        for b in SDXL.blocks
    }
    assert mapping == {
        "input_blocks.4.1": "down_blocks.1.attentions.0",
        "input_blocks.5.1": "down_blocks.1.attentions.1",
        "input_blocks.7.1": "down_blocks.2.attentions.0",
        "input_blocks.8.1": "down_blocks.2.attentions.1",
        "middle_block.1": "mid_block.attentions.0",
        "output_blocks.0.1": "up_blocks.0.attentions.0",
        "output_blocks.1.1": "up_blocks.0.attentions.1",
        "output_blocks.2.1": "up_blocks.0.attentions.2",
        "output_blocks.3.1": "up_blocks.1.attentions.0",
        "output_blocks.4.1": "up_blocks.1.attentions.1",
        "output_blocks.5.1": "up_blocks.1.attentions.2",
    }


def test_layout_from_comfy_style_unet_config():
    sdxl_config = {
        "model_channels": 320,
        "channel_mult": [1, 2, 4],
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
        "context_dim": 2048,
        "num_head_channels": 64,
    }
    assert layout_from_unet_config(sdxl_config).blocks == SDXL.blocks
    tiny = layout_from_unet_config(
        {
            **sdxl_config,
            "model_channels": 32,
            "transformer_depth": [0, 0, 2, 2, 1, 1],
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 1, 1, 1],
            "transformer_depth_middle": 1,
            "context_dim": 64,
            "num_head_channels": 16,
        }
    )
    assert [b.key for b in tiny.blocks][-3:] == [("output", 4, 1), ("output", 5, 0), ("output", 5, 1)]
    assert tiny.by_key[("input", 7, 0)].channels == 128 and tiny.by_key[("input", 7, 0)].heads == 8
