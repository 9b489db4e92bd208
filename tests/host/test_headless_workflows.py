"""The shipped workflows through tools/layerfusion_run.py at other sizes than their 1024x1024:
``--width``/``--height`` scale the Layer Prompt boxes and the Re-harmonize moves with the
canvas (they are pixels of it), so every box stays inside the image and every move keeps its
layer on the canvas; checked on the API prompt the command prints (with this ComfyUI's
/object_info, computed in-process) and by running the move-and-reharmonize workflow at
256x256 on a real server with the tiny stand-in models (tests/support/tiny_stand_ins.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from scratch_comfyui.server import ComfyServer
from support.comfy_import import REPO_ROOT, ComfyHost
from support.object_info import object_info
from support.stand_in_server import stand_in_server
from support.tiny_stand_ins import SUBSTITUTES

RUN = REPO_ROOT / "tools" / "layerfusion_run.py"
WORKFLOWS = REPO_ROOT / "workflows"
SIZES = [(256, 256), (512, 768)]
WORKFLOW_SIZE = (1024, 1024)
STEP = 8  # the box and move widgets' step
HANG_LIMIT_S = 20 * 60
"""A subprocess or server start is stopped only when it hangs; a slow machine is no failure."""


def workflow_paths() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=HANG_LIMIT_S, check=False
    )


@pytest.fixture(scope="module")
def info_file(comfy_host: ComfyHost, pack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/object_info as this ComfyUI's server answers it (its nodes, built-in extras, this pack)."""
    nodes = comfy_host.nodes
    if "MaskToImage" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_builtin_extra_nodes())
    path = tmp_path_factory.mktemp("headless_workflows") / "object_info.json"
    path.write_text(json.dumps(object_info(nodes)))
    return path


def api_prompt(info_file: Path, workflow: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_command("--workflow", str(workflow), "--object-info", str(info_file), "--print-api", *extra)


def of_type(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


def source(value: Any) -> str | None:
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


def layer_chain(prompt: dict[str, Any], top: str) -> list[str]:
    """The Layer Prompt ids of a chain, back-most (FG layer 0) first."""
    chain = [top]
    while (below := source(prompt[chain[-1]]["inputs"].get("layers"))) is not None:
        chain.append(below)
    return chain[::-1]


def bundle_sampler(prompt: dict[str, Any], node_id: str) -> str:
    """The Layers Sampler a node's bundle comes from (through Decode Layers)."""
    while prompt[node_id]["class_type"] != "LayerFusionLayersSampler":
        node_id = source(prompt[node_id]["inputs"]["bundle"])
    return node_id


def boxes(prompt: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """Every Layer Prompt with a box: (x, y, width, height)."""
    found = {}
    for nid in of_type(prompt, "LayerFusionLayerPrompt"):
        inputs = prompt[nid]["inputs"]
        if inputs["width"] or inputs["height"]:
            found[nid] = (inputs["x"], inputs["y"], inputs["width"], inputs["height"])
    return found


def moves(prompt: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    """(Re-harmonize id, moved Layer Prompt id): (dx, dy) of every layer a Re-harmonize moves."""
    found = {}
    for nid in of_type(prompt, "LayerFusionReharmonize"):
        inputs = prompt[nid]["inputs"]
        sampler = bundle_sampler(prompt, source(inputs["bundle"]))
        chain = layer_chain(prompt, source(prompt[sampler]["inputs"]["layers"]))
        for k, layer in enumerate(chain):
            move = (inputs.get(f"fg{k}_dx", 0), inputs.get(f"fg{k}_dy", 0))
            if move != (0, 0):
                found[nid, layer] = move
    return found


def check_layout(prompt: dict[str, Any], original: dict[str, Any], size: tuple[int, int]) -> None:
    """Boxes inside the canvas, on the step, at least 8x8 and where the workflow has them (to
    the step); moves that keep the layer's box (or, with no box, some of it) on the canvas."""
    width, height = size
    ratio = (width / WORKFLOW_SIZE[0], height / WORKFLOW_SIZE[1])
    for nid in of_type(prompt, "EmptyLatentImage"):
        assert (prompt[nid]["inputs"]["width"], prompt[nid]["inputs"]["height"]) == size
    scaled, shipped = boxes(prompt), boxes(original)
    assert scaled.keys() == shipped.keys()
    for nid, (x, y, w, h) in scaled.items():
        where = f"node {nid} box {(x, y, w, h)} on {width}x{height}"
        assert min(w, h) >= STEP and x >= 0 and y >= 0 and x + w <= width and y + h <= height, where
        assert all(v % STEP == 0 for v in (x, y, w, h)), where
        x0, y0, w0, h0 = shipped[nid]
        expected = (x0 * ratio[0], y0 * ratio[1], w0 * ratio[0], h0 * ratio[1])
        assert all(abs(v - e) <= STEP for v, e in zip((x, y, w, h), expected, strict=True)), where
    shipped_moves = moves(original)
    assert moves(prompt).keys() == shipped_moves.keys()
    for (nid, layer), (dx, dy) in moves(prompt).items():
        where = f"node {nid} moves layer {layer} by {(dx, dy)} on {width}x{height}"
        assert dx % STEP == 0 and dy % STEP == 0, where
        dx0, dy0 = shipped_moves[nid, layer]
        assert abs(dx - dx0 * ratio[0]) <= STEP and abs(dy - dy0 * ratio[1]) <= STEP, where
        x, y, w, h = scaled.get(layer, (0, 0, width, height))
        assert x + dx < width and x + w + dx > 0 and y + dy < height and y + h + dy > 0, where


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("path", workflow_paths(), ids=[p.stem for p in workflow_paths()])
def test_a_shipped_workflow_at_another_size_keeps_its_boxes_and_moves_on_the_canvas(
    info_file: Path, path: Path, size: tuple[int, int]
) -> None:
    shipped = api_prompt(info_file, path, "--quiet")
    if shipped.returncode == 2 and "node types unknown to the server" in shipped.stderr:
        pytest.skip(f"{path.name} needs a newer ComfyUI: {shipped.stderr.strip()}")
    assert shipped.returncode == 0, shipped.stderr
    original = json.loads(shipped.stdout)
    resized = api_prompt(info_file, path, "--width", str(size[0]), "--height", str(size[1]))
    if not of_type(original, "EmptyLatentImage"):  # image to layers: the picture's size
        assert resized.returncode == 2
        assert "--width: the workflow has no EmptyLatentImage node" in resized.stderr
        return
    assert resized.returncode == 0, resized.stderr
    check_layout(json.loads(resized.stdout), original, size)
    if boxes(original) or moves(original):
        assert "scaled with the canvas, 1024x1024 -> " in resized.stderr


# -- the move-and-reharmonize workflow run headless at 256x256 on the tiny stand-ins --


@pytest.fixture(scope="module")
def server(comfy_host: ComfyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A ComfyUI server with this pack, the stand-in nodes and a random transparent decoder."""
    base = tmp_path_factory.mktemp("headless_workflows_server")
    with stand_in_server(comfy_host.root, base, HANG_LIMIT_S) as running:
        yield running


def test_the_move_workflow_runs_headless_at_256_px_on_the_tiny_models(
    server: ComfyServer, tmp_path: Path
) -> None:
    workflow = json.loads((WORKFLOWS / "layerfusion_move_and_reharmonize.json").read_text())
    for node in workflow["nodes"]:  # the model loaders' stand-ins, with the same outputs
        node["type"] = SUBSTITUTES.get(node["type"], node["type"])
    path = tmp_path / "move.json"
    path.write_text(json.dumps(workflow))
    psd = "true" if importlib.util.find_spec("psd_tools") else "false"
    out = tmp_path / "out"
    result = run_command(
        "--server", server.url, "--workflow", str(path), "--out", str(out),
        "--width", "256", "--height", "256", "--steps", "2",
        "--set", "LayerFusionDecodeLayers.tta=false", "--set", f"12.save_psd={psd}", "--set", f"14.save_psd={psd}",
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stderr}\n--- server log ---\n{server.log_tail()}"
    written = {Path(line).name: Path(line) for line in result.stdout.splitlines()}
    for name in ("layers_00001_fg1_cat.png", "moved_00001_fg1_cat.png", "moved_00001_effects.png"):
        with Image.open(written[name]) as image:
            assert image.size == (256, 256) and image.mode == "RGBA", name
    with (
        Image.open(written["layers_00001_fg1_cat.png"]) as before,
        Image.open(written["moved_00001_fg1_cat.png"]) as after,
    ):
        assert before.tobytes() != after.tobytes()
