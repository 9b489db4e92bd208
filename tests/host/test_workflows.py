"""Every shipped workflow (workflows/*.json) against the node definitions of a real ComfyUI with
this pack loaded through ComfyUI's own loader: node types exist, links join matching types,
widget values are valid for their inputs, the defaults are METHOD.md's; then ComfyUI's own
prompt validation and execution engine run them with the tiny random SDXL model standing in
for the checkpoint and the FG weights file (tests/support/tiny_stand_ins.py).

The UI -> API conversion is the headless runner's (tools/layerfusion_headless/ui_to_api.py),
fed with /object_info computed in-process exactly as ComfyUI's server computes it.

A workflow with core's layer nodes (layerfusion_layers_to_editor: Create Layered Image, ComfyUI
0.33 and later) is skipped, with the reason, on a host without them.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from layerfusion_headless import overrides, widgets
from layerfusion_headless import ui_to_api as api_format
from PIL import Image
from safetensors.torch import save_file
from support.comfy_import import REPO_ROOT, ComfyHost
from support.core_layers import CORE_LAYER_NODES, missing_core_layer_nodes, no_core_layers_reason
from support.object_info import object_info
from support.pack_loading import prompt_executor
from support.tiny_stand_ins import random_decoder_state_dict, registered, substitute

from layerfusion_core.files.known import DEFAULT_DECODER_FILE

WORKFLOWS = REPO_ROOT / "workflows"
README = REPO_ROOT / "README.md"
EXPECTED = {
    "layerfusion_text_to_layers",
    "layerfusion_options_and_masks",
    "layerfusion_alpha_vs_generative",
    "layerfusion_multi_layer",
    "layerfusion_move_and_reharmonize",
    "layerfusion_image_to_layers",
    "layerfusion_layers_to_editor",
}
SAMPLERS = ("LayerFusionTripletSampler", "LayerFusionLayersSampler", "LayerFusionDecompose")
FRONTEND_ONLY = {"Note", "MarkdownNote"}
# Model-file combos: their options are the files present, which are absent here, so the
# value is checked by name against the files the README tells users to download.
MODEL_FILE_INPUTS = {"ckpt_name", "weights_name", "decoder_name", "vae_name"}
# METHOD.md: the LayerDiffuse reference settings.
METHOD_DEFAULTS = {"steps": 25, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
METHOD_SIZE = (1024, 1024)
E2E_SIZE = 128
E2E_STEPS = 2
E2E_IMAGE = "layerfusion_e2e.png"  # written into ComfyUI's input folder by the input_image fixture


def workflow_paths() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


WORKFLOW_IDS = [p.stem for p in workflow_paths()]
PARAMS = pytest.mark.parametrize("path", workflow_paths(), ids=WORKFLOW_IDS)


@pytest.fixture(scope="module")
def info(comfy_host: ComfyHost, pack) -> dict[str, dict[str, Any]]:
    """/object_info of every registered node: ComfyUI's nodes.py, its built-in comfy_extras
    (loaded as a server does at startup, e.g. MaskToImage) and this pack's."""
    nodes = comfy_host.nodes
    if "MaskToImage" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_builtin_extra_nodes())
    return object_info(nodes)


def skip_without_core_layers(comfy_host: ComfyHost, info: dict[str, Any], path: Path) -> None:
    """Skip, with the reason, a workflow using core's layer nodes on a host without them."""
    used = {n["type"] for n in load(path)["nodes"]} & set(CORE_LAYER_NODES)
    missing = missing_core_layer_nodes(info)
    if used and missing:
        pytest.skip(f"{path.name}: {no_core_layers_reason(comfy_host.version, missing)}")


@pytest.fixture(autouse=True)
def _workflow_needs(request: pytest.FixtureRequest, comfy_host: ComfyHost) -> None:
    """For the tests taking a workflow ``path``: skip one that needs core's layer nodes where
    the host lacks them."""
    callspec = getattr(request.node, "callspec", None)
    path = callspec.params.get("path") if callspec else None
    if path is None:
        return
    skip_without_core_layers(comfy_host, request.getfixturevalue("info"), path)


def executing_nodes(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY]


def readme_model_files() -> set[str]:
    return set(re.findall(r"[\w.\-]+\.safetensors", README.read_text()))


def input_spec(info: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            return spec[0], (spec[1] if len(spec) > 1 else {})
    raise KeyError(name)


# ---------------------------------------------------------------------------------------
# Static checks against the node definitions
# ---------------------------------------------------------------------------------------


def test_the_workflows_are_shipped_with_thumbnails() -> None:
    assert {p.stem for p in workflow_paths()} >= EXPECTED
    for path in workflow_paths():
        workflow = load(path)
        assert isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list), path.name
        assert (path.with_suffix(".jpg")).is_file(), f"{path.stem}.jpg (graph screenshot) is missing"


@PARAMS
def test_every_node_type_exists(info, path: Path) -> None:
    missing = sorted({n["type"] for n in executing_nodes(load(path))} - set(info))
    assert not missing, f"{path.name}: node types unknown to ComfyUI with this pack: {missing}"


@PARAMS
def test_links_join_matching_types(info, path: Path) -> None:
    workflow = load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        source, dest = nodes[origin], nodes[target]
        # The link table and the nodes' own slots agree (what the frontend relies on).
        assert link_id in (source["outputs"][origin_slot].get("links") or []), link_id
        slot = dest["inputs"][target_slot]
        assert slot["link"] == link_id, (
            f"{path.name}: link {link_id} is not on {dest['type']} slot {target_slot}"
        )
        out_type = info[source["type"]]["output"][origin_slot]
        in_type, _ = input_spec(info[dest["type"]], slot["name"])
        where = (
            f"{path.name}: link {link_id} {source['type']}[{origin_slot}] -> {dest['type']}.{slot['name']}"
        )
        assert isinstance(in_type, str) and in_type in (out_type, "*"), f"{where}: {out_type} into {in_type}"
        assert link_type in (out_type, "*"), f"{where}: link says {link_type}, output is {out_type}"


@PARAMS
def test_required_sockets_are_connected(info, path: Path) -> None:
    for node in executing_nodes(load(path)):
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for spec in widgets.node_inputs(info[node["type"]]):
            if spec.required and not spec.is_widget:
                assert spec.name in linked, (
                    f"{path.name}: {node['type']} {node['id']}.{spec.name} is not connected"
                )


def check_widget_value(class_type: str, name: str, value: Any, spec_type: Any, options: dict) -> None:
    where = f"{class_type}.{name} = {value!r}"
    if name in MODEL_FILE_INPUTS:  # by name only: see test_model_files_are_the_readme_downloads
        assert isinstance(value, str) and value.endswith(".safetensors"), where
        return
    if (class_type, name) == ("LoadImage", "image"):  # the user's picture; ComfyUI ships example.png
        assert value == "example.png", where
        return
    if isinstance(spec_type, list) or spec_type == "COMBO":
        choices = spec_type if isinstance(spec_type, list) else options.get("options", [])
        assert value in choices, f"{where}: not one of {choices}"
    elif spec_type == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert options.get("min", -(2**64)) <= value <= options.get("max", 2**64), f"{where}: out of range"
    elif spec_type == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), where
    elif spec_type == "BOOLEAN":
        assert isinstance(value, bool), where
    elif spec_type == "STRING":
        assert isinstance(value, str), where
    elif spec_type == "COMPOSITOR":  # Create Layered Image's editor state: {} until edited
        assert isinstance(value, dict), where
    else:
        raise AssertionError(f"{where}: unexpected widget type {spec_type}")


@PARAMS
def test_widget_values_are_valid(info, path: Path) -> None:
    for node in executing_nodes(load(path)):
        node_info = info[node["type"]]
        values = node.get("widgets_values", [])
        layout = widgets.widget_layout(node_info)
        assert len(values) == len(layout), (
            f"{path.name}: {node['type']} {node['id']} has {len(values)} widget values, this ComfyUI "
            f"expects {len(layout)} ({[s.name for s in layout]})"
        )
        for slot, value in zip(layout, values, strict=True):
            if slot.name is None:  # frontend-only, e.g. control_after_generate
                if slot.control:
                    assert value in widgets.CONTROL_VALUES, f"{node['type']}: control value {value!r}"
                continue
            spec_type, options = input_spec(node_info, slot.name)
            check_widget_value(node["type"], slot.name, value, spec_type, options)


@PARAMS
def test_model_files_are_the_readme_downloads(info, path: Path) -> None:
    """Model-file choices list the files present, which are absent here: the workflow's file
    names must be ones the README tells users to download."""
    known = readme_model_files()
    for node in executing_nodes(load(path)):
        for name, value in widget_values(info, node).items():
            if name in MODEL_FILE_INPUTS:
                assert value in known, (
                    f"{path.name}: {node['type']}.{name} = {value!r} is not a file the README names "
                    f"({sorted(known)})"
                )


def widget_values(info, node: dict[str, Any]) -> dict[str, Any]:
    return widgets.assign_widget_values(info[node["type"]], node.get("widgets_values", []))


@PARAMS
def test_defaults_follow_method_md(info, path: Path) -> None:
    workflow = load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    samplers = [n for n in workflow["nodes"] if n["type"] in SAMPLERS]
    assert len(samplers) == 1, path.name
    sampler = samplers[0]
    values = widget_values(info, sampler)
    assert {k: values[k] for k in METHOD_DEFAULTS} == METHOD_DEFAULTS
    assert values["denoise"] == 1.0
    if sampler["type"] == "LayerFusionDecompose":  # its size is the loaded image's
        assert any(n["type"] == "LoadImage" for n in workflow["nodes"])
        return
    latent_link = next(s["link"] for s in sampler["inputs"] if s["name"] == "latent_image")
    latent = nodes[next(link[1] for link in workflow["links"] if link[0] == latent_link)]
    assert latent["type"] == "EmptyLatentImage"
    size = widget_values(info, latent)
    assert (size["width"], size["height"]) == METHOD_SIZE
    # Option nodes, where shown, start at their defaults (the paper's k = 10, tau = 0.5, ...).
    for node in workflow["nodes"]:
        if node["type"] in ("LayerFusionPriorExtractor", "LayerFusionMaskBlender"):
            defaults = {s.name: widgets.widget_default(s) for s in widgets.node_inputs(info[node["type"]])}
            assert widget_values(info, node) == defaults, node["type"]


def test_workflow_variants_have_their_extra_nodes(info) -> None:
    options = load(WORKFLOWS / "layerfusion_options_and_masks.json")
    types = [n["type"] for n in options["nodes"]]
    assert {"LayerFusionPriorExtractor", "LayerFusionMaskBlender"} <= set(types)
    assert types.count("MaskToImage") == 2 and types.count("PreviewImage") == 2
    compare = load(WORKFLOWS / "layerfusion_alpha_vs_generative.json")
    types = [n["type"] for n in compare["nodes"]]
    assert "LayerFusionAlphaComposite" in types and types.count("PreviewImage") == 2
    for workflow in (options, compare, load(WORKFLOWS / "layerfusion_text_to_layers.json")):
        save = next(n for n in workflow["nodes"] if n["type"] == "LayerFusionSaveLayers")
        assert widget_values(info, save)["save_psd"] is True  # PNG and PSD


# ---------------------------------------------------------------------------------------
# ComfyUI's own validation and execution, with the tiny model standing in
# ---------------------------------------------------------------------------------------


class RecordingServer:
    """What execution.PromptExecutor needs from PromptServer: it records the messages."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata: dict[str, Any] = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


@pytest.fixture(scope="module")
def layer_model_dir(comfy_host: ComfyHost, pack, tmp_path_factory) -> Iterator[Path]:
    """A layer_model folder, first in ComfyUI's search list, holding a transparent decoder with
    the real keys and shapes and random weights under the README's file name."""
    folder = tmp_path_factory.mktemp("workflow_layer_model")
    save_file(random_decoder_state_dict(), str(folder / DEFAULT_DECODER_FILE))
    fp = comfy_host.folder_paths
    paths = fp.folder_names_and_paths["layer_model"][0]
    paths.insert(0, str(folder))
    fp.filename_list_cache.pop("layer_model", None)
    yield folder
    paths.remove(str(folder))
    fp.filename_list_cache.pop("layer_model", None)


@pytest.fixture
def stand_ins(comfy_host: ComfyHost) -> Iterator[None]:
    with registered(comfy_host.nodes):
        yield


@pytest.fixture(scope="module")
def input_image(comfy_host: ComfyHost) -> Path:
    """An E2E_SIZE x E2E_SIZE RGB picture in ComfyUI's input folder, for Load Image."""
    path = Path(comfy_host.folder_paths.get_input_directory()) / E2E_IMAGE
    pixels = np.zeros((E2E_SIZE, E2E_SIZE, 3), dtype=np.uint8)
    pixels[..., 2] = 200  # a blue picture with an orange disc in it
    yy, xx = np.mgrid[:E2E_SIZE, :E2E_SIZE]
    pixels[(yy - 64) ** 2 + (xx - 56) ** 2 < 30**2] = (240, 140, 20)
    Image.fromarray(pixels).save(path)
    return path


def tiny_prompt(info, path: Path, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API prompt, UI workflow): converted as the headless runner converts, at 128x128 with 2
    steps, the model loaders swapped for the tiny stand-ins, saving under ``prefix``."""
    workflow = load(path)
    prompt = api_format.ui_to_api(workflow, info)
    size = {"width": E2E_SIZE, "height": E2E_SIZE}
    if not any(n["class_type"] == "EmptyLatentImage" for n in prompt.values()):
        size = {}  # an image workflow: its size is the loaded image's (E2E_IMAGE)
    overrides.apply_overrides(prompt, {**size, "steps": E2E_STEPS})
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = E2E_IMAGE
    swapped = substitute(prompt)
    assert len(swapped) == 2, swapped
    for node in prompt.values():
        if node["class_type"] == "LayerFusionSaveLayers":
            node["inputs"]["filename_prefix"] = prefix
            if importlib.util.find_spec("psd_tools") is None:
                node["inputs"]["save_psd"] = False
    return prompt, workflow


def validate(prompt: dict[str, Any]) -> list[str]:
    import execution

    valid, error, outputs, node_errors = asyncio.run(
        execution.validate_prompt(str(uuid.uuid4()), prompt, None)
    )
    assert valid is True, f"ComfyUI refused the prompt: {error} {json.dumps(node_errors)[:2000]}"
    # ComfyUI runs a prompt when at least one output node is valid and drops the others.
    assert not node_errors, f"ComfyUI would drop output nodes: {json.dumps(node_errors)[:2000]}"
    return outputs


@PARAMS
def test_comfyui_accepts_the_converted_prompt(
    info, layer_model_dir, stand_ins, input_image, path: Path
) -> None:
    prompt, _ = tiny_prompt(info, path, "validate")
    outputs = validate(prompt)
    save_ids = [nid for nid, n in prompt.items() if n["class_type"] == "LayerFusionSaveLayers"]
    assert set(save_ids) <= set(outputs)


def run_prompt(prompt: dict[str, Any], workflow: dict[str, Any]) -> dict[str, Any]:
    """Validate and execute with ComfyUI's PromptExecutor; return its history entry."""

    outputs = validate(prompt)
    server = RecordingServer()
    executor = prompt_executor(server)
    extra = {"extra_pnginfo": {"workflow": copy.deepcopy(workflow)}}
    executor.execute(prompt, str(uuid.uuid4()), extra, outputs)
    errors = [data for event, data in server.messages if event == "execution_error"]
    assert executor.success and not errors, errors[:1]
    return executor.history_result


def node_id_of(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [nid for nid, n in prompt.items() if n["class_type"] == class_type]


def test_text_to_layers_runs_end_to_end_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins
) -> None:
    prompt, workflow = tiny_prompt(info, WORKFLOWS / "layerfusion_text_to_layers.json", "e2e/layers")
    history = run_prompt(prompt, workflow)

    out = Path(comfy_host.folder_paths.get_output_directory()) / "e2e"
    fg = Image.open(out / "layers_00001_fg.png")
    assert fg.mode == "RGBA" and fg.size == (E2E_SIZE, E2E_SIZE)
    alpha = np.asarray(fg)[..., 3]
    assert alpha.min() < 255 and len(np.unique(alpha)) > 1  # the decoder's alpha, not an opaque fill
    for layer in ("bg", "blended"):
        image = Image.open(out / f"layers_00001_{layer}.png")
        assert image.mode == "RGB" and image.size == (E2E_SIZE, E2E_SIZE)
    saves_psd = prompt[node_id_of(prompt, "LayerFusionSaveLayers")[0]]["inputs"]["save_psd"]
    assert (out / "layers_00001_layers.psd").is_file() == saves_psd
    (save_id,) = node_id_of(prompt, "LayerFusionSaveLayers")
    shown = [f["filename"] for f in history["outputs"][save_id]["images"]]
    assert shown == ["layers_00001_fg.png", "layers_00001_bg.png", "layers_00001_blended.png"]
    # The workflow travels in the PNG, as with SaveImage: dropping the file on ComfyUI reloads it.
    assert json.loads(fg.info["workflow"])["nodes"]


@pytest.mark.parametrize("name", ["layerfusion_options_and_masks", "layerfusion_alpha_vs_generative"])
def test_the_other_workflows_run_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins, name: str
) -> None:
    prompt, workflow = tiny_prompt(info, WORKFLOWS / f"{name}.json", f"e2e/{name}")
    history = run_prompt(prompt, workflow)
    out = Path(comfy_host.folder_paths.get_output_directory()) / "e2e"
    saved = sorted(p.name for p in out.glob(f"{name}_00001_*"))
    layers = [f"{name}_00001_{x}.png" for x in ("bg", "blended", "fg")]
    if name == "layerfusion_options_and_masks":
        layers += [f"{name}_00001_{x}.png" for x in ("hard_mask", "soft_mask")]
    assert set(layers) <= set(saved), saved
    previews = node_id_of(prompt, "PreviewImage")
    assert len(previews) == 2
    for node_id in previews:
        (image,) = history["outputs"][node_id]["images"]
        path = Path(comfy_host.folder_paths.get_temp_directory()) / image["subfolder"] / image["filename"]
        assert Image.open(path).size == (E2E_SIZE, E2E_SIZE)


def test_multi_layer_workflow_runs_end_to_end_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins
) -> None:
    """Two FG layers (the front one in a box), decoded and saved as PNGs and a PSD."""
    prompt, workflow = tiny_prompt(info, WORKFLOWS / "layerfusion_multi_layer.json", "e2e/multi")
    layer_prompts = [prompt[i]["inputs"] for i in node_id_of(prompt, "LayerFusionLayerPrompt")]
    names = [p["name"] for p in sorted(layer_prompts, key=lambda p: isinstance(p.get("layers"), list))]
    assert names == ["armchair", "cat"]  # the chain: back-most first
    (boxed,) = [p for p in layer_prompts if p["width"]]
    for key in ("x", "y", "width", "height"):  # the box follows the image to the test's size
        boxed[key] = boxed[key] * E2E_SIZE // METHOD_SIZE[0]
    history = run_prompt(prompt, workflow)

    out = Path(comfy_host.folder_paths.get_output_directory()) / "e2e"
    layers = ["multi_00001_fg0_armchair.png", "multi_00001_fg1_cat.png"]
    (save_id,) = node_id_of(prompt, "LayerFusionSaveLayers")
    shown = [f["filename"] for f in history["outputs"][save_id]["images"]]
    assert shown == [*layers, "multi_00001_bg.png", "multi_00001_blended.png"]
    for name in layers:
        with Image.open(out / name) as image:
            assert image.mode == "RGBA" and image.size == (E2E_SIZE, E2E_SIZE)
            assert len(np.unique(np.asarray(image)[..., 3])) > 1  # the decoder's alpha
            assert json.loads(image.info["workflow"])["nodes"]
    for name in ("bg", "blended", "fg0_armchair_soft_mask", "fg1_cat_hard_mask"):
        with Image.open(out / f"multi_00001_{name}.png") as image:
            assert image.mode == ("RGB" if name in ("bg", "blended") else "L")
    if not prompt[save_id]["inputs"]["save_psd"]:
        return
    psd_tools = pytest.importorskip("psd_tools")
    psd = psd_tools.PSDImage.open(out / "multi_00001_layers.psd")
    assert [(layer.name, layer.visible) for layer in psd] == [
        ("background", True),
        ("armchair", True),
        ("cat", True),
        ("blended", False),
    ]
    with Image.open(out / layers[1]) as cat:
        assert np.array_equal(np.asarray(psd[2].topil()), np.asarray(cat))


def test_move_and_reharmonize_workflow_runs_end_to_end_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins
) -> None:
    """Two layers generated and saved, the cat moved and mirrored, BLENDED re-harmonised, the
    moved layers saved with their effects layer."""
    path = WORKFLOWS / "layerfusion_move_and_reharmonize.json"
    prompt, workflow = tiny_prompt(info, path, "e2e/move")
    for node_id in node_id_of(prompt, "LayerFusionLayerPrompt"):
        inputs = prompt[node_id]["inputs"]
        for key in ("x", "y", "width", "height"):  # the box follows the image to the test's size
            inputs[key] = inputs[key] * E2E_SIZE // METHOD_SIZE[0]
    (reharmonize_id,) = node_id_of(prompt, "LayerFusionReharmonize")
    move = prompt[reharmonize_id]["inputs"]
    assert (move["fg1_dx"], move["fg1_flip_h"], move["preset"]) == (-384, True, "default")
    move["fg1_dx"] = move["fg1_dx"] * E2E_SIZE // METHOD_SIZE[0]
    saves = node_id_of(prompt, "LayerFusionSaveLayers")
    for node_id, prefix in zip(saves, ("e2e/move_layers", "e2e/move_moved"), strict=True):
        prompt[node_id]["inputs"]["filename_prefix"] = prefix
    history = run_prompt(prompt, workflow)

    out = Path(comfy_host.folder_paths.get_output_directory()) / "e2e"
    first, moved = ([f["filename"] for f in history["outputs"][node_id]["images"]] for node_id in saves)
    assert first == [f"move_layers_00001_{n}.png" for n in ("fg0_armchair", "fg1_cat", "bg", "blended")]
    assert moved == [
        f"move_moved_00001_{n}.png" for n in ("fg0_armchair", "fg1_cat", "bg", "blended", "effects")
    ]
    with (
        Image.open(out / "move_layers_00001_fg1_cat.png") as before,
        Image.open(out / "move_moved_00001_fg1_cat.png") as after,
    ):
        assert after.mode == "RGBA" and after.size == (E2E_SIZE, E2E_SIZE)
        assert not np.array_equal(np.asarray(before), np.asarray(after))
    with (
        Image.open(out / "move_layers_00001_bg.png") as before,
        Image.open(out / "move_moved_00001_bg.png") as after,
    ):
        assert np.array_equal(np.asarray(before), np.asarray(after))  # BG unchanged
    with Image.open(out / "move_moved_00001_effects.png") as effects:
        assert effects.mode == "RGBA"
    if prompt[saves[1]]["inputs"]["save_psd"]:
        psd_tools = pytest.importorskip("psd_tools")
        psd = psd_tools.PSDImage.open(out / "move_moved_00001_layers.psd")
        assert [layer.name for layer in psd] == ["background", "effects", "armchair", "cat", "blended"]


def test_image_to_layers_workflow_runs_end_to_end_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins, input_image
) -> None:
    """Load Image, Decompose, Decode Layers, Save Layers: the layer as RGBA, BG, and BLENDED the
    picture's reconstruction."""
    prompt, workflow = tiny_prompt(info, WORKFLOWS / "layerfusion_image_to_layers.json", "e2e/image")
    (decompose_id,) = node_id_of(prompt, "LayerFusionDecompose")
    assert prompt[decompose_id]["inputs"]["steps"] == E2E_STEPS
    history = run_prompt(prompt, workflow)
    out = Path(comfy_host.folder_paths.get_output_directory()) / "e2e"
    (save_id,) = node_id_of(prompt, "LayerFusionSaveLayers")
    shown = [f["filename"] for f in history["outputs"][save_id]["images"]]
    assert shown == [f"image_00001_{n}.png" for n in ("fg0_girl", "bg", "blended")]
    with Image.open(out / "image_00001_fg0_girl.png") as layer:
        assert layer.mode == "RGBA" and layer.size == (E2E_SIZE, E2E_SIZE)
    with Image.open(out / "image_00001_bg.png") as bg:
        assert bg.mode == "RGB" and bg.size == (E2E_SIZE, E2E_SIZE)


def test_layers_to_editor_workflow_runs_end_to_end_with_the_tiny_model(
    comfy_host: ComfyHost, info, layer_model_dir, stand_ins
) -> None:
    """The multi-layer run, decoded; Decode Layers' LAYERS document into core's Create Layered
    Image: a composite of the image's size, one layer preview per layer for the editor, our
    layers by name bottom to top with BLENDED hidden; Save Layers writes the bundle too."""
    path = WORKFLOWS / "layerfusion_layers_to_editor.json"
    skip_without_core_layers(comfy_host, info, path)
    prompt, workflow = tiny_prompt(info, path, "e2e/editor")
    for node_id in node_id_of(prompt, "LayerFusionLayerPrompt"):
        inputs = prompt[node_id]["inputs"]
        for key in ("x", "y", "width", "height"):  # the box follows the image to the test's size
            inputs[key] = inputs[key] * E2E_SIZE // METHOD_SIZE[0]
    (compositor_id,) = node_id_of(prompt, "ImageCompositor")
    (decode_id,) = node_id_of(prompt, "LayerFusionDecodeLayers")
    assert prompt[compositor_id]["inputs"]["layers"] == [decode_id, 6]  # Decode Layers' layers output
    history = run_prompt(prompt, workflow)

    shown = history["outputs"][compositor_id]
    (composite,) = shown["images"]
    with Image.open(
        Path(comfy_host.folder_paths.get_temp_directory()) / composite["subfolder"] / composite["filename"]
    ) as image:
        assert image.size == (E2E_SIZE, E2E_SIZE)
    assert [(b["name"], b["visible"], b["width"], b["height"]) for b in shown["compositor_bboxes"]] == [
        ("bg", True, E2E_SIZE, E2E_SIZE),
        ("armchair", True, E2E_SIZE, E2E_SIZE),
        ("cat", True, E2E_SIZE, E2E_SIZE),
        ("blended", False, E2E_SIZE, E2E_SIZE),
    ]
    assert len(shown["compositor_layers"]) == 4 and len(shown["compositor_inputs"]) == 4
    (save_id,) = node_id_of(prompt, "LayerFusionSaveLayers")
    saved = [f["filename"] for f in history["outputs"][save_id]["images"]]
    assert saved == [f"editor_00001_{n}.png" for n in ("fg0_armchair", "fg1_cat", "bg", "blended")]


def test_the_converted_prompt_keeps_the_layer_editor_state(comfy_host: ComfyHost, info) -> None:
    """What the layer editor saved on Create Layered Image reaches the prompt, as the frontend
    sends it."""
    path = WORKFLOWS / "layerfusion_layers_to_editor.json"
    skip_without_core_layers(comfy_host, info, path)
    workflow = load(path)
    state = {"version": 1, "canvas": {"w": 64, "h": 64}, "layers": []}
    (node,) = [n for n in workflow["nodes"] if n["type"] == "ImageCompositor"]
    node["widgets_values"] = [state]
    prompt = api_format.ui_to_api(workflow, info)
    assert prompt[str(node["id"])]["inputs"]["compositor"] == state
