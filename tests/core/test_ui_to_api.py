"""UI-format -> API-format conversion, overrides and the headless command's pure parts, without a
server: a hand-made workflow against a hand-made /object_info snippet."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from layerfusion_headless import downloads, errors, follow, overrides, refusals, widgets
from layerfusion_headless import ui_to_api as api_format

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"

SEED_MAX = 0xFFFFFFFFFFFFFFFF

OBJECT_INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint",
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
        "input_order": {"required": ["text", "clip"]},
        "output": ["CONDITIONING"],
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512}],
                "height": ["INT", {"default": 512}],
                "batch_size": ["INT", {"default": 1}],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size"]},
        "output": ["LATENT"],
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "cfg": ["FLOAT", {"default": 8.0}],
                "sampler_name": [["euler", "dpmpp_2m"], {}],
                "scheduler": [["normal", "karras"], {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": ["FLOAT", {"default": 1.0}],
            }
        },
        "input_order": {
            "required": [
                "model",
                "seed",
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "positive",
                "negative",
                "latent_image",
                "denoise",
            ]
        },
        "output": ["LATENT"],
    },
    "LatentUpscale": {
        "input": {
            "required": {
                "samples": ["LATENT", {}],
                "upscale_method": [["nearest-exact", "bilinear"], {}],
                "width": ["INT", {"default": 512}],
                "height": ["INT", {"default": 512}],
                "crop": [["disabled", "center"], {}],
            }
        },
        "input_order": {"required": ["samples", "upscale_method", "width", "height", "crop"]},
        "output": ["LATENT"],
    },
    "VAEDecode": {
        "input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}},
        "input_order": {"required": ["samples", "vae"]},
        "output": ["IMAGE"],
    },
    "SaveImage": {
        "input": {
            "required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            "hidden": {"prompt": "PROMPT"},
        },
        "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt"]},
        "output": [],
        "output_node": True,
        "display_name": "Save Image",
    },
}

# V3-style nodes and special widgets.
EXTRA_INFO: dict[str, Any] = {
    "LayerFusionTextEncode": {
        "input": {
            "required": {
                "clip": ["CLIP", {}],
                "fg_text": ["STRING", {"multiline": True}],
                "bg_text": ["STRING", {"multiline": True}],
            },
            "optional": {"blended_text": ["STRING", {"multiline": True, "default": ""}]},
        },
        "input_order": {"required": ["clip", "fg_text", "bg_text"], "optional": ["blended_text"]},
        "output": ["CONDITIONING", "CONDITIONING", "CONDITIONING"],
    },
    "LayerFusionTripletSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "steps": ["INT", {"default": 25}],
                "sampler_name": ["COMBO", {"options": ["euler", "dpmpp_2m"], "default": "dpmpp_2m"}],
            }
        },
        "input_order": {"required": ["model", "seed", "steps", "sampler_name"]},
        "output": ["LATENT"],
    },
    "LoadImage": {
        "input": {"required": {"image": [["x.png", "y.png"], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
    },
    "PickCombo": {  # a combo with control_after_generate: control + filter widgets follow it
        "input": {
            "required": {"choice": [["p", "q", "r"], {"control_after_generate": True}], "count": ["INT", {}]}
        },
        "input_order": {"required": ["choice", "count"]},
        "output": ["STRING"],
    },
    "LegacySeed": {  # an INT named seed without the option: the frontend adds a control anyway
        "input": {"required": {"seed": ["INT", {}], "noise": ["INT", {"control_after_generate": False}]}},
        "output": ["INT"],
    },
    "Forced": {
        "input": {
            "required": {"value": ["INT", {"forceInput": True}], "name": ["STRING", {}]},
            "optional": {"tags": ["COMBO", {"options": ["a", "b"], "multiselect": True}]},
        },
        "input_order": {"required": ["value", "name"], "optional": ["tags"]},
        "output": [],
        "output_node": True,
    },
}
ALL_INFO = {**OBJECT_INFO, **EXTRA_INFO}


def node(node_id: int, kind: str, widgets: Any = None, inputs: Any = (), outputs: Any = (), **extra: Any):
    entry = {
        "id": node_id,
        "type": kind,
        "mode": 0,
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs],
        **extra,
    }
    if widgets is not None:
        entry["widgets_values"] = widgets
    return entry


def txt2img_workflow() -> dict[str, Any]:
    """Checkpoint -> two prompts -> KSampler -> decode -> save, with a PrimitiveNode feeding the
    positive text, a Reroute carrying CLIP, a bypassed LatentUpscale, a muted SaveImage and a
    Note."""
    nodes = [
        node(
            1,
            "CheckpointLoaderSimple",
            ["b.safetensors"],
            outputs=[("MODEL", [1]), ("CLIP", [2]), ("VAE", [9])],
        ),
        node(
            2,
            "CLIPTextEncode",
            ["stale text the primitive overrides"],
            inputs=[("clip", "CLIP", 3), ("text", "STRING", 12)],
            outputs=[("CONDITIONING", [4])],
        ),
        node(2, "placeholder"),  # replaced below: keeps the id list readable
        node(4, "EmptyLatentImage", [1024, 768, 1], outputs=[("LATENT", [6])]),
        node(
            5,
            "KSampler",
            [42, "randomize", 25, 7.0, "dpmpp_2m", "karras", 1.0],
            inputs=[
                ("model", "MODEL", 1),
                ("positive", "CONDITIONING", 4),
                ("negative", "CONDITIONING", 5),
                ("latent_image", "LATENT", 7),
            ],
            outputs=[("LATENT", [8])],
        ),
        node(
            6,
            "VAEDecode",
            [],
            inputs=[("samples", "LATENT", 8), ("vae", "VAE", 9)],
            outputs=[("IMAGE", [10, 11])],
        ),
        node(7, "SaveImage", ["layers/run"], inputs=[("images", "IMAGE", 10)]),
        node(
            8,
            "LatentUpscale",
            ["nearest-exact", 2048, 2048, "disabled"],
            inputs=[("samples", "LATENT", 6)],
            outputs=[("LATENT", [7])],
            mode=4,
        ),
        node(9, "SaveImage", ["muted"], inputs=[("images", "IMAGE", 11)], mode=2),
        node(10, "PrimitiveNode", ["a red fox"], outputs=[("STRING", [12])]),
        node(11, "Reroute", None, inputs=[("", "*", 2)], outputs=[("CLIP", [3, 13])]),
        node(12, "Note", ["remember to download the model"]),
        node(13, "MarkdownNote", ["# hello"]),
    ]
    nodes[2] = node(
        3, "CLIPTextEncode", ["blurry"], inputs=[("clip", "CLIP", 13)], outputs=[("CONDITIONING", [5])]
    )
    nodes[1]["inputs"][1]["widget"] = {"name": "text"}
    links = [
        [1, 1, 0, 5, 0, "MODEL"],
        [2, 1, 1, 11, 0, "CLIP"],
        [3, 11, 0, 2, 0, "CLIP"],
        [13, 11, 0, 3, 0, "CLIP"],
        [4, 2, 0, 5, 1, "CONDITIONING"],
        [5, 3, 0, 5, 2, "CONDITIONING"],
        [6, 4, 0, 8, 0, "LATENT"],
        [7, 8, 0, 5, 3, "LATENT"],
        [8, 5, 0, 6, 0, "LATENT"],
        [9, 1, 2, 6, 1, "VAE"],
        [10, 6, 0, 7, 0, "IMAGE"],
        [11, 6, 0, 9, 0, "IMAGE"],
        [12, 10, 0, 2, 1, "STRING"],
    ]
    return {"last_node_id": 13, "nodes": nodes, "links": links, "version": 0.4}


EXPECTED_TXT2IMG = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
    "5": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 42,
            "steps": 25,
            "cfg": 7.0,
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "denoise": 1.0,
            "model": ["1", 0],
            "positive": ["2", 0],
            "negative": ["3", 0],
            "latent_image": ["4", 0],
        },
    },
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "layers/run", "images": ["6", 0]}},
}


def without_meta(prompt: dict[str, Any]) -> dict[str, Any]:
    return {nid: {k: v for k, v in n.items() if k != "_meta"} for nid, n in prompt.items()}


def test_txt2img_workflow_converts_like_the_frontend() -> None:
    prompt = api_format.ui_to_api(txt2img_workflow(), OBJECT_INFO)
    assert without_meta(prompt) == EXPECTED_TXT2IMG
    assert prompt["1"]["_meta"]["title"] == "Load Checkpoint"


def test_links_in_object_form_give_the_same_prompt() -> None:
    workflow = txt2img_workflow()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    workflow["links"] = [dict(zip(keys, link, strict=True)) for link in workflow["links"]]
    assert without_meta(api_format.ui_to_api(workflow, OBJECT_INFO)) == EXPECTED_TXT2IMG


def test_seed_control_value_is_skipped_and_frontend_only_nodes_are_dropped() -> None:
    prompt = api_format.ui_to_api(txt2img_workflow(), OBJECT_INFO)
    assert "randomize" not in json.dumps(prompt)
    assert set(prompt) == {"1", "2", "3", "4", "5", "6", "7"}  # no muted 9, bypassed 8, 10-13


def test_title_is_kept_in_meta() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][4]["title"] = "Main sampler"
    assert api_format.ui_to_api(workflow, OBJECT_INFO)["5"]["_meta"]["title"] == "Main sampler"


def test_bypassed_node_without_a_matching_input_is_an_error_for_a_required_socket() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][7]["inputs"][0]["type"] = "IMAGE"  # nothing of type LATENT to pass through
    with pytest.raises(errors.WorkflowError, match=r"node 5 input latent_image .* bypassed"):
        api_format.ui_to_api(workflow, OBJECT_INFO)


def test_muted_source_of_a_required_socket_is_an_error() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][3]["mode"] = 2  # EmptyLatentImage muted; the bypass passes it through
    with pytest.raises(errors.WorkflowError, match=r"node 5 input latent_image gets no value: .*4.*muted"):
        api_format.ui_to_api(workflow, OBJECT_INFO)


def test_muted_source_of_a_widget_input_keeps_the_widget_value() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][9]["mode"] = 2  # the PrimitiveNode is frontend-only: its value still counts
    assert api_format.ui_to_api(workflow, OBJECT_INFO)["2"]["inputs"]["text"] == "a red fox"
    workflow = txt2img_workflow()
    workflow["links"][-1][1] = 4  # feed the text from a muted real node instead
    workflow["nodes"][3]["mode"] = 2
    workflow["nodes"][4]["inputs"][3]["link"] = None  # and detach the latent, not under test
    conversion = api_format.convert_workflow(workflow, OBJECT_INFO)
    assert conversion.prompt["2"]["inputs"]["text"] == "stale text the primitive overrides"
    assert any("node 2 input text left unset" in note for note in conversion.notes)


def test_unknown_node_types_are_all_named() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][4]["type"] = "LayerFusionTripletSampler"
    workflow["nodes"][5]["type"] = "SomePackDecode"
    with pytest.raises(errors.UnknownNodeTypeError) as info:
        api_format.ui_to_api(workflow, OBJECT_INFO)
    assert info.value.class_types == ("LayerFusionTripletSampler", "SomePackDecode")
    assert "LayerFusionTripletSampler (node 5)" in str(info.value)


def test_unknown_type_on_a_muted_or_bypassed_node_is_fine() -> None:
    workflow = txt2img_workflow()
    workflow["nodes"][8]["type"] = "NotInstalled"
    assert "9" not in api_format.ui_to_api(workflow, OBJECT_INFO)


def test_subgraphs_are_refused_with_a_fix() -> None:
    workflow = txt2img_workflow()
    workflow["definitions"] = {"subgraphs": [{"id": "abc-123"}]}
    workflow["nodes"][5]["type"] = "abc-123"
    with pytest.raises(errors.WorkflowError, match="unpack the subgraph"):
        api_format.ui_to_api(workflow, OBJECT_INFO)


def test_reroute_loop_is_an_error() -> None:
    workflow = {
        "nodes": [
            node(1, "Reroute", None, inputs=[("", "*", 2)], outputs=[("*", [1])]),
            node(2, "Reroute", None, inputs=[("", "*", 1)], outputs=[("*", [2, 3])]),
            node(3, "SaveImage", ["x"], inputs=[("images", "IMAGE", 3)]),
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "IMAGE"]],
    }
    with pytest.raises(errors.WorkflowError, match="loop"):
        api_format.ui_to_api(workflow, OBJECT_INFO)


def convert_one(kind: str, widgets: Any) -> dict[str, Any]:
    prompt = api_format.ui_to_api({"nodes": [node(1, kind, widgets)], "links": []}, ALL_INFO)
    return prompt["1"]["inputs"]


def test_v3_seed_with_control_and_v3_combo() -> None:
    assert convert_one("LayerFusionTripletSampler", [7, "fixed", 30, "euler"]) == {
        "seed": 7,
        "steps": 30,
        "sampler_name": "euler",
    }


def test_optional_widgets_follow_the_required_ones() -> None:
    assert convert_one("LayerFusionTextEncode", ["a cat", "a sofa", "a cat on a sofa"]) == {
        "fg_text": "a cat",
        "bg_text": "a sofa",
        "blended_text": "a cat on a sofa",
    }


def test_missing_widget_values_take_the_defaults() -> None:
    assert convert_one("LayerFusionTextEncode", ["a cat", "a sofa"])["blended_text"] == ""
    assert convert_one("EmptyLatentImage", None) == {"width": 512, "height": 512, "batch_size": 1}
    assert convert_one("CheckpointLoaderSimple", [])["ckpt_name"] == "a.safetensors"


def test_seed_saved_without_its_control_value_still_lines_up() -> None:
    assert convert_one("LayerFusionTripletSampler", [7, 30, "euler"]) == {
        "seed": 7,
        "steps": 30,
        "sampler_name": "euler",
    }


def test_combo_with_control_after_generate_skips_control_and_filter() -> None:
    assert convert_one("PickCombo", ["q", "increment", "", 3]) == {"choice": "q", "count": 3}


def test_legacy_seed_name_gets_a_control_unless_disabled() -> None:
    assert widgets.widget_layout(EXTRA_INFO["LegacySeed"]) == [
        widgets.WidgetSlot("seed"),
        widgets.WidgetSlot(None, control=True),
        widgets.WidgetSlot("noise"),
    ]
    assert convert_one("LegacySeed", [5, "fixed", 6]) == {"seed": 5, "noise": 6}


def test_image_upload_button_value_is_skipped() -> None:
    assert convert_one("LoadImage", ["y.png", "image"]) == {"image": "y.png"}


def test_force_input_is_a_socket_and_lists_are_wrapped() -> None:
    assert convert_one("Forced", ["name", ["a", "b"]]) == {"name": "name", "tags": {"__value__": ["a", "b"]}}


def test_widgets_values_as_a_mapping() -> None:
    assert convert_one("EmptyLatentImage", {"width": 640, "height": 480, "batch_size": 2, "extra": 1}) == {
        "width": 640,
        "height": 480,
        "batch_size": 2,
    }


def test_old_boolean_seed_control_is_skipped() -> None:
    inputs = convert_one("KSampler", [156680208700286, True, 20, 8, "euler", "normal", 1])
    assert inputs["seed"] == 156680208700286 and inputs["steps"] == 20 and inputs["denoise"] == 1


# ---------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------


def layer_prompt() -> dict[str, Any]:
    workflow = {
        "nodes": [
            node(1, "LayerFusionTextEncode", ["fox", "forest", ""], inputs=[("clip", "CLIP", None)]),
            node(2, "LayerFusionTripletSampler", [1, "randomize", 25, "dpmpp_2m"]),
            node(3, "EmptyLatentImage", [1024, 1024, 1], title="Size"),
            node(4, "CheckpointLoaderSimple", ["a.safetensors"]),
        ],
        "links": [],
    }
    return api_format.ui_to_api(workflow, ALL_INFO)


def test_named_overrides_set_inputs_by_node_type() -> None:
    prompt = layer_prompt()
    changes = overrides.apply_overrides(
        prompt,
        {
            "fg": "a glass",
            "bg": "a table",
            "blended": None,
            "seed": 9,
            "steps": 4,
            "width": 512,
            "height": 768,
        },
    )
    assert prompt["1"]["inputs"] == {"fg_text": "a glass", "bg_text": "a table", "blended_text": ""}
    assert prompt["2"]["inputs"]["seed"] == 9 and prompt["2"]["inputs"]["steps"] == 4
    assert prompt["3"]["inputs"] == {"width": 512, "height": 768, "batch_size": 1}
    assert len(changes) == 6


def test_named_override_without_a_target_node_is_an_error() -> None:
    prompt = api_format.ui_to_api({"nodes": [node(1, "EmptyLatentImage", [8, 8, 1])], "links": []}, ALL_INFO)
    with pytest.raises(errors.WorkflowError, match="--fg: the workflow has no LayerFusionTextEncode"):
        overrides.apply_overrides(prompt, {"fg": "x"})


@pytest.mark.parametrize(
    ("text", "node_ref", "name", "value"),
    [
        ("4.ckpt_name=tiny.safetensors", "4", "ckpt_name", "tiny.safetensors"),
        ("2.seed=12", "2", "seed", 12),
        ("Size.width=64", "Size", "width", 64),
        ("x.flag=true", "x", "flag", True),
        ("x.tags=[1, 2]", "x", "tags", [1, 2]),
        ("My v1.2 node.text=a=b", "My v1.2 node", "text", "a=b"),
    ],
)
def test_parse_set_override(text: str, node_ref: str, name: str, value: Any) -> None:
    assert overrides.parse_set_override(text) == overrides.SetOverride(node_ref, name, value)


@pytest.mark.parametrize("text", ["seed=1", "4.seed", ".seed=1", "4.=1"])
def test_parse_set_override_rejects_malformed(text: str) -> None:
    with pytest.raises(errors.WorkflowError, match=r"NODE\.INPUT=VALUE"):
        overrides.parse_set_override(text)


def test_set_override_finds_nodes_by_id_title_or_type() -> None:
    prompt = layer_prompt()
    overrides.apply_overrides(
        prompt,
        {},
        [
            overrides.parse_set_override("CheckpointLoaderSimple.ckpt_name=tiny.safetensors"),
            overrides.parse_set_override("Size.batch_size=3"),
            overrides.parse_set_override("2.sampler_name=euler"),
        ],
    )
    assert prompt["4"]["inputs"]["ckpt_name"] == "tiny.safetensors"
    assert prompt["3"]["inputs"]["batch_size"] == 3
    assert prompt["2"]["inputs"]["sampler_name"] == "euler"
    with pytest.raises(errors.WorkflowError, match="no node 'Nope'"):
        overrides.apply_overrides(prompt, {}, [overrides.parse_set_override("Nope.x=1")])


def test_set_override_replacing_a_link_says_so() -> None:
    prompt = layer_prompt()
    prompt["2"]["inputs"]["seed"] = ["9", 0]
    (change,) = overrides.apply_overrides(prompt, {}, [overrides.parse_set_override("2.seed=5")])
    assert prompt["2"]["inputs"]["seed"] == 5 and "replacing its link" in change


# ---------------------------------------------------------------------------------------
# The command's pure parts
# ---------------------------------------------------------------------------------------


def test_value_not_in_list_for_a_checkpoint_says_where_the_file_goes() -> None:
    error = {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": "ckpt_name: 'sdxl.safetensors' not in []",
        "extra_info": {"input_name": "ckpt_name", "received_value": "sdxl.safetensors"},
    }
    finder = refusals.FolderFinder(None, None)
    line = refusals.describe_node_error("4", "CheckpointLoaderSimple", error, OBJECT_INFO, finder)
    assert "model file missing: node 4 (CheckpointLoaderSimple) input ckpt_name" in line
    assert "'sdxl.safetensors'" in line and "models/checkpoints/" in line


def test_value_not_in_list_for_a_layerdiffuse_file_gives_the_download_address() -> None:
    error = {
        "type": "value_not_in_list",
        "extra_info": {"input_name": "decoder_name", "received_value": "vae_transparent_decoder.safetensors"},
    }
    finder = refusals.FolderFinder(None, refusals._load_model_files())
    line = refusals.describe_node_error("9", "LayerFusionTransparentDecoderLoader", error, {}, finder)
    assert "models/layer_model/" in line
    assert (
        "https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/vae_transparent_decoder" in line
    )


def test_folder_is_found_from_the_server_listing() -> None:
    finder = refusals.FolderFinder(None, None, {"checkpoints": ["m.safetensors"], "vae": ["v.safetensors"]})
    assert finder.folder("VAELoader", "vae_name", "other.safetensors", ["v.safetensors"]) == "vae"


def test_refusal_without_node_errors_reports_the_top_error() -> None:
    answer = {"error": {"message": "Prompt has no outputs", "details": ""}, "node_errors": {}}
    assert refusals.describe_refusal(answer, {}, refusals.FolderFinder(None, None)) == [
        "Prompt has no outputs"
    ]


def test_websocket_events() -> None:
    reporter = follow.Reporter({"5": {"class_type": "KSampler"}}, quiet=True)
    assert follow.handle_event("executing", {"node": "5", "prompt_id": "p"}, "p", reporter) is None
    assert follow.handle_event("progress", {"value": 3, "max": 25, "prompt_id": "p"}, "p", reporter) is None
    assert follow.handle_event("execution_success", {"prompt_id": "other"}, "p", reporter) is None
    assert follow.handle_event("execution_success", {"prompt_id": "p"}, "p", reporter) == follow.Outcome(True)
    assert follow.handle_event(
        "executing", {"node": None, "prompt_id": "p"}, "p", reporter
    ) == follow.Outcome(True)
    failed = follow.handle_event(
        "execution_error",
        {
            "prompt_id": "p",
            "node_id": "5",
            "node_type": "KSampler",
            "exception_type": "torch.OutOfMemoryError",
            "exception_message": "out of memory\n",
        },
        "p",
        reporter,
    )
    assert failed == follow.Outcome(False, "node 5 (KSampler) failed: OutOfMemoryError: out of memory")


def test_history_error_status_is_a_failure() -> None:
    entry = {
        "status": {
            "status_str": "error",
            "messages": [
                ["execution_start", {"prompt_id": "p"}],
                ["execution_error", {"node_id": "3", "node_type": "X", "exception_message": "boom"}],
            ],
        }
    }
    assert follow.history_outcome(entry) == follow.Outcome(False, "node 3 (X) failed: boom")
    assert follow.history_outcome({"status": {"status_str": "success"}}).ok


def test_saved_files_are_the_output_records_of_every_node() -> None:
    entry = {
        "outputs": {
            "7": {"images": [{"filename": "a.png", "subfolder": "layers", "type": "output"}]},
            "8": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
            "9": {
                "files": [{"filename": "l.psd", "subfolder": "layers", "type": "output"}],
                "text": ["not a file"],
            },
        }
    }
    assert downloads.saved_files(entry) == [
        downloads.SavedFile("7", "a.png", "layers", "output"),
        downloads.SavedFile("9", "l.psd", "layers", "output"),
    ]
    assert len(downloads.saved_files(entry, ("output", "temp"))) == 3


def test_saved_files_never_leave_the_out_folder(tmp_path: Path) -> None:
    assert (
        downloads.local_path(tmp_path, downloads.SavedFile("1", "a.png", "x/y", "output"))
        == tmp_path / "x" / "y" / "a.png"
    )
    with pytest.raises(errors.RunError, match="leaves"):
        downloads.local_path(tmp_path, downloads.SavedFile("1", "a.png", "../up", "output"))


SUBPROCESS_HANG_LIMIT_S = 20 * 60  # stopped only when it hangs: a slow or busy machine is no failure


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOLS / "layerfusion_run.py"), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_HANG_LIMIT_S,
        check=False,
    )


def test_help_runs_without_comfyui_or_torch() -> None:
    assert run_cli("--help").returncode == 0
    probe = (
        f"import sys; sys.path.insert(0, {str(TOOLS)!r}); import layerfusion_run; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'comfy', 'folder_paths', 'nodes')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_HANG_LIMIT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_print_api_works_offline_with_a_saved_object_info(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(json.dumps(txt2img_workflow()))
    (tmp_path / "oi.json").write_text(json.dumps(OBJECT_INFO))
    result = run_cli(
        "--workflow",
        str(tmp_path / "wf.json"),
        "--object-info",
        str(tmp_path / "oi.json"),
        "--print-api",
        "--seed",
        "5",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    expected = copy.deepcopy(EXPECTED_TXT2IMG)
    expected["5"]["inputs"]["seed"] = 5
    assert without_meta(json.loads(result.stdout)) == expected


def test_invalid_json_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text('{"nodes": [')
    result = run_cli("--workflow", str(tmp_path / "wf.json"), "--server", "http://127.0.0.1:9")
    assert result.returncode == errors.EXIT_USAGE
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'wf.json'} is not valid JSON (line 1, column 12: Expecting value)"
    ]
