"""The shipped templates and the layer-preview extension (web/) in a real headless Chromium
against a real ComfyUI server with its frontend package.

The server (``main.py --cpu`` on 127.0.0.1) loads this repository as the custom node pack
``ComfyUI-LayerFusion`` plus a generated test-only pack (tests/support/tiny_stand_ins.py: the
tiny random SDXL model, a CLIP that needs no weights, a small VAE, tiny FG weights, synthetic
layers), both made visible through ComfyUI's ``--extra-model-paths-config``; a random-weight
transparent decoder with the real shapes sits in a temporary ``layer_model`` folder.

- every template is listed by ComfyUI, loads in the editor without missing nodes, and
  re-serialises to the same widget values and links; its shipped thumbnail
  (``workflows/<name>.jpg``, made by tools/make_workflow_thumbnails.py) is served, and its
  graph is screenshotted into tests/artifacts/ (this test never writes into workflows/);
- the text-to-layers template runs (the frontend converts it; checkpoint and FG loader are
  swapped for the tiny stand-ins, 128x128, 2 steps) and the preview shows its layers;
- synthetic layers check the checkerboard, each toggle, and that the preview widget stores
  nothing in the workflow or the prompt;
- a synthetic two-layer bundle checks the preview of a K-layer bundle: one toggle per layer by
  its name, back to front, then BG, BLENDED, the effects layer, and the masks of the layer
  shown last; stepping through a batch.

A template using core's layer nodes (Create Layered Image, ComfyUI 0.33 and later) is skipped,
with the reason, on a host without them; tests/host/test_browser_layers.py runs it on one that
has them.

Needs Debian's chromium (``apt-get install -y chromium``) and the playwright Python package
(``pip install playwright``; no ``playwright install``: the system browser is used). Skipped
with the reason when either is missing.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scratch_comfyui.editor import (
    API,
    APP,
    PACK_NAME,
    graph_thumbnail,
    load_template,
    open_editor,
    write_settings,
)
from scratch_comfyui.server import ComfyServer
from support.browser import require_browser
from support.comfy_import import REPO_ROOT, ComfyHost
from support.core_layers import CORE_LAYER_NODES, missing_core_layer_nodes, no_core_layers_reason
from support.stand_in_server import stand_in_server
from support.tiny_stand_ins import SUBSTITUTES

WORKFLOWS = REPO_ROOT / "workflows"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
# Wall-clock limits stop only what hangs: a slow or busy machine is no failure.
SERVER_START_LIMIT_S = 20 * 60
"""The server's start (one that exits at startup is reported at once)."""
RUN_SILENT_LIMIT_S = 10 * 60
"""A run's preview is waited for while the server works on it (the job in its queue, or its
log growing); the test fails once nothing has happened for this long."""
RUN_POLL_MS = 5_000
UI_TIMEOUT_MS = 5 * 60_000
"""The editor's own waits (a redraw, a toggle)."""

CHROMIUM = require_browser()

from playwright.sync_api import Page  # noqa: E402


def shipped_workflows() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def server(comfy_host: ComfyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("browser_server")
    with stand_in_server(comfy_host.root, base, SERVER_START_LIMIT_S, write_settings) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    profile = tmp_path_factory.mktemp("chromium_profile")
    errors: list[str] = []
    node_types = ["LayerFusionSaveLayers", "LayerFusionTestSyntheticLayers", "LayerFusionTestSyntheticBundle"]
    with open_editor(server.url, CHROMIUM, profile, node_types, errors.append) as tab:
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.evaluate(
            f"""() => {{
                window.__layerfusion = {{ errors: [], executed: [] }};
                {API}.addEventListener("execution_error", (e) => window.__layerfusion.errors.push(e.detail));
                {API}.addEventListener("executed", (e) => window.__layerfusion.executed.push(e.detail));
            }}"""
        )
        tab.layerfusion_errors = errors  # type: ignore[attr-defined]
        yield tab
    ours = [e for e in errors if "layerfusion" in e.lower()]
    assert not ours, f"uncaught errors from the LayerFusion extension: {ours}"


def node_by_type(page: Page, class_type: str) -> int:
    ids = page.evaluate(
        f"(type) => {APP}.graph.nodes.filter((n) => n.type === type).map((n) => n.id)", class_type
    )
    assert len(ids) == 1, f"expected one {class_type} node, got {ids}"
    return ids[0]


def set_widget(page: Page, node_id: int, name: str, value: Any) -> None:
    page.evaluate(
        f"""([id, name, value]) => {{
            const widget = {APP}.graph.getNodeById(id).widgets.find((w) => w.name === name);
            if (!widget) throw new Error(`node ${{id}} has no widget ${{name}}`);
            widget.value = value;
        }}""",
        [node_id, name, value],
    )


def server_progress(server: ComfyServer) -> tuple[Any, ...]:
    """What changes while the server works: its log's size, and the jobs it runs or queues."""
    try:
        queue = server.client.get_json("/queue")
        jobs = tuple(len(queue.get(key) or []) for key in ("queue_running", "queue_pending"))
    except Exception:  # not answering right now: only the log tells
        jobs = ()
    return server.log.stat().st_size, jobs


def wait_for_preview(page: Page, server: ComfyServer, node_id: int) -> None:
    """Wait until the node's preview is ready (or the run failed) while the server makes
    progress; fail once it has been idle for RUN_SILENT_LIMIT_S with no preview."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    last, last_change = server_progress(server), time.monotonic()
    while True:
        try:
            page.wait_for_function(
                f"""(id) => window.__layerfusion.errors.length > 0 ||
                    {APP}.graph.getNodeById(id)?.layerfusionPreview?.element.dataset.state === "ready"
                """,
                arg=node_id,
                timeout=RUN_POLL_MS,
            )
            break
        except PlaywrightTimeout:
            now = server_progress(server)
            busy = any(now[1])
            if busy or now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > RUN_SILENT_LIMIT_S:
                raise AssertionError(
                    f"no preview, and the server idle for {RUN_SILENT_LIMIT_S} s; server log:\n"
                    f"{server.log_tail()}"
                ) from None
    errors = page.evaluate("() => window.__layerfusion.errors")
    assert not errors, f"the run failed: {json.dumps(errors)[:2000]}\n{server.log_tail()}"


def preview_state(page: Page, node_id: int) -> dict[str, Any]:
    return page.evaluate(
        f"""(id) => {{
            const preview = {APP}.graph.getNodeById(id).layerfusionPreview;
            const element = preview.element;
            const canvas = element.querySelector("canvas.layerfusion-preview-canvas");
            const ctx = canvas.getContext("2d");
            const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            const buttons = {{}};
            for (const b of element.querySelectorAll("button[data-layer]"))
                buttons[b.dataset.layer] = {{ disabled: b.disabled, pressed: b.getAttribute("aria-pressed") }};
            const box = element.getBoundingClientRect();
            return {{
                state: element.dataset.state, layer: element.dataset.layer, buttons,
                canvas: [canvas.width, canvas.height], painted, rect: preview.drawnRect ?? null,
                visible: box.width > 0 && box.height > 0 && element.isConnected,
                box: [box.x, box.y, box.width, box.height],
            }};
        }}""",
        node_id,
    )


def canvas_digest(page: Page, node_id: int) -> int:
    return page.evaluate(
        f"""(id) => {{
            const canvas = {APP}.graph.getNodeById(id).layerfusionPreview.canvas;
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let hash = 0;
            for (let i = 0; i < data.length; i++) hash = (hash * 31 + data[i]) | 0;
            return hash;
        }}""",
        node_id,
    )


def click_layer(page: Page, node_id: int, layer: str) -> None:
    page.evaluate(
        f"""([id, layer]) => {APP}.graph.getNodeById(id).layerfusionPreview.element
            .querySelector(`button[data-layer="${{layer}}"]`).click()""",
        [node_id, layer],
    )


def pixel(page: Page, node_id: int, fx: float, fy: float) -> tuple[int, int, int, int]:
    """The preview canvas pixel at (fx, fy), fractions of the drawn image's rectangle."""
    return tuple(
        page.evaluate(
            f"""([id, fx, fy]) => {{
                const preview = {APP}.graph.getNodeById(id).layerfusionPreview;
                const r = preview.drawnRect;
                const x = Math.floor(r.x + fx * r.w), y = Math.floor(r.y + fy * r.h);
                return Array.from(preview.canvas.getContext("2d").getImageData(x, y, 1, 1).data);
            }}""",
            [node_id, fx, fy],
        )
    )


def focus_node(page: Page, node_id: int) -> None:
    """Centre the view on the node at zoom 1 and wait until its preview has drawn at its
    on-screen size (the frontend hides DOM widgets of nodes outside the view)."""
    page.evaluate(
        f"""(id) => {{
            const canvas = {APP}.canvas;
            canvas.ds.scale = 1;
            canvas.centerOnNode({APP}.graph.getNodeById(id));
            canvas.setDirty(true, true);
        }}""",
        node_id,
    )
    page.wait_for_function(
        f"""(id) => {{
            const preview = {APP}.graph.getNodeById(id).layerfusionPreview;
            return preview.canvas.clientWidth > 100 && preview.drawnRect?.w > 100;
        }}""",
        arg=node_id,
        timeout=UI_TIMEOUT_MS,
    )


def node_screenshot(page: Page, node_id: int) -> bytes:
    """The node, centred at zoom 1, as PNG."""
    focus_node(page, node_id)
    clip = page.evaluate(
        f"""async (id) => {{
            const app = {APP};
            const canvas = app.canvas;
            const node = app.graph.getNodeById(id);
            await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
            const rect = canvas.canvas.getBoundingClientRect();
            const [ox, oy] = canvas.ds.offset;
            const pad = 12, title = 30;
            return {{
                x: Math.max(0, rect.x + node.pos[0] + ox - pad),
                y: Math.max(0, rect.y + node.pos[1] - title + oy - pad),
                width: node.size[0] + 2 * pad,
                height: node.size[1] + title + 2 * pad,
            }};
        }}""",
        node_id,
    )
    return page.screenshot(clip=clip)


def save_artifact(name: str, data: bytes) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------


def test_extension_is_served_and_registered(page: Page, server: ComfyServer) -> None:
    extensions = server.client.get_json("/extensions")
    ours = [e for e in extensions if e.startswith(f"/extensions/{PACK_NAME}/")]
    assert ours == [f"/extensions/{PACK_NAME}/layerfusion_preview.js"], extensions
    names = page.evaluate(f"() => {APP}.extensions.map((e) => e.name)")
    assert "LayerFusion.LayerPreview" in names


@pytest.fixture(scope="module")
def server_node_types(server: ComfyServer) -> set[str]:
    return set(server.client.get_json("/object_info"))


def skip_without_core_layers(comfy_host: ComfyHost, node_types: set[str], name: str) -> None:
    """Skip, with the reason, a template using core's layer nodes on a host without them."""
    used = {n["type"] for n in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"]}
    missing = missing_core_layer_nodes(node_types)
    if used & set(CORE_LAYER_NODES) and missing:
        pytest.skip(f"{name}: {no_core_layers_reason(comfy_host.version, missing)}")


@pytest.mark.parametrize("name", shipped_workflows())
def test_template_is_listed_loads_and_round_trips(
    comfy_host: ComfyHost, page: Page, server: ComfyServer, server_node_types: set[str], name: str
) -> None:
    skip_without_core_layers(comfy_host, server_node_types, name)
    assert name in server.client.get_json("/workflow_templates").get(PACK_NAME, [])
    workflow = load_template(page, name)
    loaded = page.evaluate(
        f"""() => {{
            const app = {APP};
            return {{
                missing: app.graph.nodes.filter((n) => !n.constructor.nodeData && n.type !== "Note").map((n) => n.type),
                saved: JSON.parse(JSON.stringify(app.graph.serialize())),
            }};
        }}"""
    )
    assert loaded["missing"] == [], f"{name}: node types unknown to the frontend: {loaded['missing']}"
    saved = {n["id"]: n for n in loaded["saved"]["nodes"]}
    assert sorted(saved) == sorted(n["id"] for n in workflow["nodes"])
    for node in workflow["nodes"]:
        again = saved[node["id"]]
        assert again["type"] == node["type"]
        assert again.get("widgets_values", []) == node.get("widgets_values", []), (
            f"{name}: node {node['id']} ({node['type']}) widget values change when this frontend "
            "loads and saves the workflow (layout out of date?)"
        )
    assert sorted(map(tuple, loaded["saved"]["links"])) == sorted(map(tuple, workflow["links"]))

    save_artifact(f"{name}.graph.jpg", graph_thumbnail(page, name))
    shipped = WORKFLOWS / f"{name}.jpg"
    assert shipped.is_file(), f"{name}.jpg is missing: run tools/make_workflow_thumbnails.py {name}"
    served = page.evaluate(
        f"""async (name) => {{
            const r = await fetch({API}.apiURL(`/workflow_templates/{PACK_NAME}/${{name}}.jpg`));
            return [r.status, r.headers.get("content-type")];
        }}""",
        name,
    )
    assert served == [200, "image/jpeg"], served


def test_text_to_layers_template_runs_with_the_tiny_model_and_previews(
    page: Page, server: ComfyServer
) -> None:
    load_template(page, "layerfusion_text_to_layers")
    set_widget(page, node_by_type(page, "EmptyLatentImage"), "width", 128)
    set_widget(page, node_by_type(page, "EmptyLatentImage"), "height", 128)
    set_widget(page, node_by_type(page, "LayerFusionTripletSampler"), "steps", 2)
    set_widget(page, node_by_type(page, "LayerFusionTransparentDecode"), "tta", False)
    save_node = node_by_type(page, "LayerFusionSaveLayers")
    psd = importlib.util.find_spec("psd_tools") is not None
    set_widget(page, save_node, "save_psd", psd)
    set_widget(page, save_node, "filename_prefix", "browser/template")
    # The frontend converts the graph (graphToPrompt); only the class types of the model
    # loaders change, to stand-ins with the same outputs.
    queued = page.evaluate(
        f"""async (substitutes) => {{
            const prompt = await {APP}.graphToPrompt();
            for (const node of Object.values(prompt.output))
                if (substitutes[node.class_type]) node.class_type = substitutes[node.class_type];
            return await {API}.queuePrompt(0, prompt);
        }}""",
        SUBSTITUTES,
    )
    assert not queued.get("node_errors"), queued
    wait_for_preview(page, server, save_node)
    focus_node(page, save_node)
    state = preview_state(page, save_node)
    assert state["visible"] and state["layer"] == "fg" and state["painted"] > 0, state
    assert {k: v["disabled"] for k, v in state["buttons"].items()} == {
        "fg": False,
        "bg": False,
        "blended": False,
        "soft_mask": True,  # not connected in this template: not saved, toggle disabled
        "hard_mask": True,
    }
    digests = {}
    for layer in ("fg", "bg", "blended"):
        click_layer(page, save_node, layer)
        assert preview_state(page, save_node)["layer"] == layer
        digests[layer] = canvas_digest(page, save_node)
    assert len(set(digests.values())) == 3, "the toggles do not change the displayed layer"
    click_layer(page, save_node, "fg")
    files = sorted(p.name for p in (server.output_dir / "browser").iterdir())
    expected = ["template_00001_bg.png", "template_00001_blended.png", "template_00001_fg.png"]
    assert files == sorted(expected + (["template_00001_layers.psd"] if psd else []))
    save_artifact("browser_preview_text_to_layers.png", node_screenshot(page, save_node))
    save_artifact("browser_text_to_layers_page.png", page.screenshot())


def synthetic_workflow(batch: int = 1) -> dict[str, Any]:
    """LayerFusionTestSyntheticLayers (64x48) -> LayerFusionSaveLayers with both masks."""

    def slot(name: str, kind: str, link: int | None) -> dict[str, Any]:
        return {"name": name, "type": kind, "link": link}

    outputs = [
        ("fg", "IMAGE"),
        ("bg", "IMAGE"),
        ("blended", "IMAGE"),
        ("soft_mask", "MASK"),
        ("hard_mask", "MASK"),
    ]
    return {
        "last_node_id": 2,
        "last_link_id": 5,
        "nodes": [
            {
                "id": 1,
                "type": "LayerFusionTestSyntheticLayers",
                "pos": [50, 50],
                "size": [300, 200],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [
                    {"name": n, "type": t, "links": [i + 1], "slot_index": i}
                    for i, (n, t) in enumerate(outputs)
                ],
                "properties": {},
                "widgets_values": [64, 48, batch],
            },
            {
                "id": 2,
                "type": "LayerFusionSaveLayers",
                "pos": [420, 50],
                "size": [520, 520],
                "flags": {},
                "order": 1,
                "mode": 0,
                "inputs": [
                    slot("foreground", "IMAGE", 1),
                    slot("background", "IMAGE", 2),
                    slot("blended", "IMAGE", 3),
                    slot("soft_mask", "MASK", 4),
                    slot("hard_mask", "MASK", 5),
                ],
                "outputs": [],
                "properties": {},
                "widgets_values": ["browser/synthetic", False],
            },
        ],
        "links": [
            [1, 1, 0, 2, 0, "IMAGE"],
            [2, 1, 1, 2, 1, "IMAGE"],
            [3, 1, 2, 2, 2, "IMAGE"],
            [4, 1, 3, 2, 3, "MASK"],
            [5, 1, 4, 2, 4, "MASK"],
        ],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def test_preview_checkerboard_and_toggles_on_synthetic_layers(page: Page, server: ComfyServer) -> None:
    page.evaluate(
        f"async (w) => {{ window.__layerfusion.errors.length = 0; await {APP}.loadGraphData(w, true, false, 'synthetic'); }}",
        synthetic_workflow(),
    )
    # The preview widget adds nothing to the saved workflow or to the prompt.
    serialised = page.evaluate(
        f"""async () => {{
            const prompt = await {APP}.graphToPrompt();
            return {{ values: prompt.workflow.nodes.find((n) => n.id === 2).widgets_values,
                      inputs: Object.keys(prompt.output["2"].inputs).sort() }};
        }}"""
    )
    assert serialised["values"] == ["browser/synthetic", False]
    assert serialised["inputs"] == sorted(
        ["foreground", "background", "blended", "soft_mask", "hard_mask", "filename_prefix", "save_psd"]
    )
    page.evaluate(f"() => {APP}.queuePrompt(0, 1)")  # the Run button's path
    wait_for_preview(page, server, 2)
    focus_node(page, 2)
    state = preview_state(page, 2)
    assert all(not b["disabled"] for b in state["buttons"].values()), state

    # FG: red where opaque (right half); the checkerboard where transparent (left half).
    assert pixel(page, 2, 0.75, 0.5)[:3] == (255, 0, 0)
    left = {
        pixel(page, 2, fx, fy)[:3]
        for fx in (0.05, 0.15, 0.25, 0.35, 0.45)
        for fy in (0.1, 0.3, 0.5, 0.7, 0.9)
    }
    assert left <= {(208, 208, 208), (140, 140, 140)} and len(left) == 2, left

    expected = {"bg": (0, 0, 255), "blended": (0, 255, 0)}
    for layer, colour in expected.items():
        click_layer(page, 2, layer)
        assert preview_state(page, 2)["layer"] == layer
        assert pixel(page, 2, 0.25, 0.5)[:3] == colour
        assert pixel(page, 2, 0.75, 0.5)[:3] == colour
    click_layer(page, 2, "soft_mask")
    dark, bright = pixel(page, 2, 0.1, 0.5), pixel(page, 2, 0.9, 0.5)
    assert dark[0] == dark[1] == dark[2] and bright[0] == bright[1] == bright[2] and dark[0] + 100 < bright[0]
    click_layer(page, 2, "hard_mask")
    assert pixel(page, 2, 0.2, 0.5)[:3] == (0, 0, 0) and pixel(page, 2, 0.8, 0.5)[:3] == (255, 255, 255)
    pressed = [k for k, v in preview_state(page, 2)["buttons"].items() if v["pressed"] == "true"]
    assert pressed == ["hard_mask"]

    click_layer(page, 2, "fg")
    save_artifact("browser_preview_synthetic.png", node_screenshot(page, 2))


def test_preview_steps_through_the_triplets_of_a_batch(page: Page, server: ComfyServer) -> None:
    page.evaluate(
        f"""async (w) => {{
            window.__layerfusion.errors.length = 0;
            await {APP}.loadGraphData(w, true, false, 'synthetic batch');
            await {APP}.queuePrompt(0, 1);
        }}""",
        synthetic_workflow(batch=2),
    )
    wait_for_preview(page, server, 2)
    focus_node(page, 2)
    info = "() => document.querySelector('.layerfusion-preview-info').textContent"
    assert page.evaluate(info).endswith("1/2")
    assert pixel(page, 2, 0.75, 0.5)[:3] == (255, 0, 0)
    page.evaluate(
        f"""() => {{
            const bar = {APP}.graph.getNodeById(2).layerfusionPreview.nextButton;
            if (bar.hidden) throw new Error("no next button for a batch of 2");
            bar.click();
        }}"""
    )
    page.wait_for_function(
        f"() => {APP}.graph.getNodeById(2).layerfusionPreview.index === 1 && "
        f"{APP}.graph.getNodeById(2).layerfusionPreview.element.dataset.state === 'ready'"
    )
    assert page.evaluate(info).endswith("2/2")
    assert pixel(page, 2, 0.75, 0.5)[:3] == (255, 255, 0)


def synthetic_bundle_workflow(batch: int = 1, effects: bool = True) -> dict[str, Any]:
    """LayerFusionTestSyntheticBundle (64x48, layers "back layer" and "cat") -> Save Layers' bundle."""
    return {
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": [
            {
                "id": 1,
                "type": "LayerFusionTestSyntheticBundle",
                "pos": [50, 50],
                "size": [300, 160],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "bundle", "type": "LAYERFUSION_LAYERS", "links": [1], "slot_index": 0}],
                "properties": {},
                "widgets_values": [64, 48, batch, effects],
            },
            {
                "id": 2,
                "type": "LayerFusionSaveLayers",
                "pos": [420, 50],
                "size": [520, 520],
                "flags": {},
                "order": 1,
                "mode": 0,
                "inputs": [
                    *(
                        {"name": name, "type": kind, "link": None}
                        for name, kind in (
                            ("foreground", "IMAGE"),
                            ("background", "IMAGE"),
                            ("blended", "IMAGE"),
                            ("soft_mask", "MASK"),
                            ("hard_mask", "MASK"),
                        )
                    ),
                    {"name": "bundle", "type": "LAYERFUSION_LAYERS", "link": 1},
                ],
                "outputs": [],
                "properties": {},
                "widgets_values": ["browser/bundle", False],
            },
        ],
        "links": [[1, 1, 0, 2, 5, "LAYERFUSION_LAYERS"]],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def run_synthetic_bundle(page: Page, server: ComfyServer, batch: int, effects: bool) -> None:
    page.evaluate(
        f"""async (w) => {{
            window.__layerfusion.errors.length = 0;
            await {APP}.loadGraphData(w, true, false, 'synthetic bundle');
            await {APP}.queuePrompt(0, 1);
        }}""",
        synthetic_bundle_workflow(batch, effects),
    )
    wait_for_preview(page, server, 2)
    focus_node(page, 2)


def button_labels(page: Page, node_id: int) -> list[tuple[str, str, bool]]:
    """(data-layer, label, disabled) of the preview's layer buttons, in the bar's order."""
    return [
        tuple(entry)
        for entry in page.evaluate(
            f"""(id) => Array.from({APP}.graph.getNodeById(id).layerfusionPreview.element
                .querySelectorAll("button[data-layer]")).map((b) => [b.dataset.layer, b.textContent, b.disabled])""",
            node_id,
        )
    ]


CHECKER = {(208, 208, 208), (140, 140, 140)}


def test_preview_shows_a_layer_bundle_by_layer(page: Page, server: ComfyServer, tmp_path: Path) -> None:
    """Save Layers with a decoded bundle: one toggle per FG layer by name (back to front), BG,
    BLENDED, EFFECTS, and the masks of the FG layer shown last."""
    run_synthetic_bundle(page, server, batch=1, effects=True)
    assert button_labels(page, 2) == [
        ("fg0", "back_layer", False),
        ("fg1", "cat", False),
        ("bg", "BG", False),
        ("blended", "BLENDED", False),
        ("effects", "EFFECTS", False),
        ("soft_mask", "SOFT MASK", False),
        ("hard_mask", "HARD MASK", False),
    ]
    state = preview_state(page, 2)
    assert state["layer"] == "fg0" and state["painted"] > 0, state  # the back-most layer first
    # back layer: red where opaque (right half), the checkerboard where clear (left half)
    assert pixel(page, 2, 0.75, 0.5)[:3] == (255, 0, 0)
    assert {pixel(page, 2, fx, 0.5)[:3] for fx in (0.05, 0.15, 0.25, 0.35, 0.45)} <= CHECKER
    click_layer(page, 2, "fg1")  # cat: yellow on the top half, clear below
    assert pixel(page, 2, 0.5, 0.2)[:3] == (255, 255, 0)
    assert {pixel(page, 2, fx, 0.8)[:3] for fx in (0.1, 0.3, 0.5, 0.7, 0.9)} <= CHECKER
    # The mask buttons show the masks of the FG layer shown last: the cat's, top to bottom.
    click_layer(page, 2, "hard_mask")
    assert pixel(page, 2, 0.5, 0.2)[:3] == (255, 255, 255) and pixel(page, 2, 0.5, 0.8)[:3] == (0, 0, 0)
    click_layer(page, 2, "soft_mask")
    top, bottom = pixel(page, 2, 0.5, 0.05), pixel(page, 2, 0.5, 0.95)
    assert top[0] == top[1] == top[2] and top[0] + 100 < bottom[0]
    click_layer(page, 2, "fg0")
    click_layer(page, 2, "hard_mask")  # now the back layer's: its right half
    assert pixel(page, 2, 0.2, 0.5)[:3] == (0, 0, 0) and pixel(page, 2, 0.8, 0.5)[:3] == (255, 255, 255)
    for layer, colour in {"bg": (0, 0, 255), "blended": (0, 255, 0)}.items():
        click_layer(page, 2, layer)
        assert preview_state(page, 2)["layer"] == layer
        assert pixel(page, 2, 0.25, 0.5)[:3] == colour and pixel(page, 2, 0.75, 0.5)[:3] == colour
    click_layer(page, 2, "effects")  # magenta at half alpha over the checkerboard
    r, g, b, _ = pixel(page, 2, 0.5, 0.5)
    assert r > g + 60 and b > g + 60, (r, g, b)
    click_layer(page, 2, "fg0")
    (tmp_path / "browser_preview_bundle.png").write_bytes(node_screenshot(page, 2))


def test_preview_steps_through_the_images_of_a_bundle(page: Page, server: ComfyServer) -> None:
    run_synthetic_bundle(page, server, batch=2, effects=False)
    assert [key for key, _, _ in button_labels(page, 2)] == [
        "fg0",
        "fg1",
        "bg",
        "blended",
        "soft_mask",
        "hard_mask",
    ]
    info = "() => document.querySelector('.layerfusion-preview-info').textContent"
    assert page.evaluate(info).endswith("1/2")
    click_layer(page, 2, "fg1")
    assert pixel(page, 2, 0.5, 0.2)[:3] == (255, 255, 0)
    page.evaluate(f"() => {APP}.graph.getNodeById(2).layerfusionPreview.nextButton.click()")
    page.wait_for_function(
        f"() => {APP}.graph.getNodeById(2).layerfusionPreview.index === 1 && "
        f"{APP}.graph.getNodeById(2).layerfusionPreview.element.dataset.state === 'ready'"
    )
    assert page.evaluate(info).endswith("2/2")
    assert preview_state(page, 2)["layer"] == "fg1"  # the same layer of the next image
    assert pixel(page, 2, 0.5, 0.2)[:3] == (0, 255, 255)


def test_thumbnails_are_labelled_graph_screenshots() -> None:
    """Each shipped workflow has a same-name JPEG thumbnail (made by tools/make_workflow_thumbnails.py)."""
    for name in shipped_workflows():
        data = (WORKFLOWS / f"{name}.jpg").read_bytes()
        assert data[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
