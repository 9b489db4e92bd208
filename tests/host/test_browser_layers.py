"""Our layers in ComfyUI's own layer editor, in a real headless Chromium against a real ComfyUI
server with its frontend package (ComfyUI 0.33 and later: core's layer system).

The shipped layers-to-editor template runs on the tiny stand-ins (the frontend converts it; the
checkpoint and FG loaders are swapped for the stand-ins, 128x128, 2 steps): Decode Layers'
LAYERS document reaches core's Create Layered Image, and Save Layers' preview shows the bundle's
layers by name. Then, with the frontend's Nodes 2.0 (the layer editor's Open button exists only
there), the layer editor opens on Create Layered Image: its layer panel lists our layers by name
in stacking order (BLENDED hidden on top), and its PSD export gives those layers, with our pixels.
Screenshots go to pytest's temporary folder.

Skipped with the reason on a host without core's layer nodes, or without Debian's chromium or
the playwright Python package (tests/host/test_browser_preview.py says how to get them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scratch_comfyui.editor import (
    API,
    APP,
    load_template,
    open_editor,
    write_settings,
)
from scratch_comfyui.server import ComfyServer
from support.browser import require_browser
from support.comfy_import import ComfyHost
from support.core_layers import load_core_layer_nodes, no_core_layers_reason
from support.stand_in_server import stand_in_server
from support.tiny_stand_ins import SUBSTITUTES

TEMPLATE = "layerfusion_layers_to_editor"
SIZE = 128
METHOD_SIZE = 1024  # the template's image size: its box is scaled with the image
PREFIX = "browser/editor"
# Waits stop only what hangs: a slow or busy machine is no failure.
SERVER_START_LIMIT_S = 20 * 60
RUN_TIMEOUT_MS = 10 * 60_000
UI_TIMEOUT_MS = 2 * 60_000
VUE_NODES = "Comfy.VueNodes.Enabled"  # "Nodes 2.0": the compositor widget exists only there
OUR_LAYERS = ["bg", "armchair", "cat", "blended"]  # bottom to top

CHROMIUM = require_browser()

from playwright.sync_api import Page  # noqa: E402


@pytest.fixture(scope="module")
def server(comfy_host: ComfyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    missing = load_core_layer_nodes(comfy_host)
    if missing:
        pytest.skip(no_core_layers_reason(comfy_host.version, missing))
    base = tmp_path_factory.mktemp("browser_layers_server")
    with stand_in_server(comfy_host.root, base, SERVER_START_LIMIT_S, write_settings) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    errors: list[str] = []
    profile = tmp_path_factory.mktemp("chromium_profile_layers")
    node_types = ["LayerFusionSaveLayers", "ImageCompositor", "LayerFusionTestTinyCheckpoint"]
    with open_editor(server.url, CHROMIUM, profile, node_types, errors.append) as tab:
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.evaluate(
            f"""() => {{
                window.__layerfusion = {{ errors: [], executed: [] }};
                {API}.addEventListener("execution_error", (e) => window.__layerfusion.errors.push(e.detail));
                {API}.addEventListener("executed", (e) => window.__layerfusion.executed.push(e.detail));
            }}"""
        )
        yield tab
    ours = [e for e in errors if "layerfusion" in e.lower()]
    assert not ours, f"uncaught errors from the LayerFusion extension: {ours}"


def node_ids(page: Page, class_type: str) -> list[int]:
    return page.evaluate(
        f"(type) => {APP}.graph.nodes.filter((n) => n.type === type).map((n) => n.id)", class_type
    )


@pytest.fixture(scope="module")
def ran(page: Page, server: ComfyServer) -> SimpleNamespace:
    """The template loaded as the templates dialog loads it and queued as the Run button
    queues it (graphToPrompt), at 128x128 with 2 steps and the stand-ins; its prompt and the
    ``executed`` outputs by node id."""
    workflow = load_template(page, TEMPLATE)
    missing = page.evaluate(
        f"() => {APP}.graph.nodes.filter((n) => !n.constructor.nodeData && n.type !== 'Note').map((n) => n.type)"
    )
    assert missing == [], f"node types unknown to the frontend: {missing}"
    page.evaluate(
        f"""([size, scale, prefix]) => {{
            const set = (type, name, value) => {{
                for (const node of {APP}.graph.nodes.filter((n) => n.type === type)) {{
                    const widget = node.widgets.find((w) => w.name === name);
                    widget.value = typeof value === "function" ? value(widget.value) : value;
                }}
            }};
            set("EmptyLatentImage", "width", size);
            set("EmptyLatentImage", "height", size);
            set("LayerFusionLayersSampler", "steps", 2);
            set("LayerFusionDecodeLayers", "tta", false);
            for (const key of ["x", "y", "width", "height"])  // the box follows the image's size
                set("LayerFusionLayerPrompt", key, (v) => Math.round(v * scale));
            set("LayerFusionSaveLayers", "filename_prefix", prefix);
            set("LayerFusionSaveLayers", "save_psd", false);
        }}""",
        [SIZE, SIZE / METHOD_SIZE, PREFIX],
    )
    # Only the model loaders' class types change, to stand-ins with the same outputs.
    queued = page.evaluate(
        f"""async (substitutes) => {{
            const prompt = await {APP}.graphToPrompt();
            for (const node of Object.values(prompt.output))
                if (substitutes[node.class_type]) node.class_type = substitutes[node.class_type];
            const queued = await {API}.queuePrompt(0, prompt);
            return {{ queued, prompt: prompt.output }};
        }}""",
        SUBSTITUTES,
    )
    assert not queued["queued"].get("node_errors"), queued["queued"]
    (compositor,) = node_ids(page, "ImageCompositor")
    (save,) = node_ids(page, "LayerFusionSaveLayers")
    try:
        page.wait_for_function(
            """(ids) => window.__layerfusion.errors.length > 0 ||
                ids.every((id) => window.__layerfusion.executed.some((e) => e.node === String(id)))""",
            arg=[compositor, save],
            timeout=RUN_TIMEOUT_MS,
        )
    except Exception as exc:
        raise AssertionError(f"the run did not finish; server log:\n{server.log_tail()}") from exc
    errors = page.evaluate("() => window.__layerfusion.errors")
    assert not errors, f"the run failed: {json.dumps(errors)[:2000]}\n{server.log_tail()}"
    executed = {e["node"]: e["output"] for e in page.evaluate("() => window.__layerfusion.executed")}
    return SimpleNamespace(
        workflow=workflow, prompt=queued["prompt"], executed=executed, compositor=compositor, save=save
    )


def test_the_template_runs_into_create_layered_image(
    page: Page, server: ComfyServer, ran, tmp_path: Path
) -> None:
    sent = ran.prompt[str(ran.compositor)]
    decode = str(node_ids(page, "LayerFusionDecodeLayers")[0])
    assert sent["inputs"]["layers"] == [decode, 6]  # Decode Layers' LAYERS output
    assert sent["inputs"]["compositor"] == {}  # the editor's state: nothing saved yet
    shown = ran.executed[str(ran.compositor)]
    assert [(b["name"], b["visible"], b["width"], b["height"]) for b in shown["compositor_bboxes"]] == [
        (name, name != "blended", SIZE, SIZE) for name in OUR_LAYERS
    ]
    assert len(shown["compositor_layers"]) == len(OUR_LAYERS)
    (composite,) = shown["images"]
    served = page.evaluate(
        f"""(file) => new Promise((resolve) => {{
            const image = new Image();
            image.onload = () => resolve([image.naturalWidth, image.naturalHeight]);
            image.onerror = () => resolve(null);
            image.src = {API}.apiURL(`/view?${{new URLSearchParams(file)}}`);
        }})""",
        composite,
    )
    assert served == [SIZE, SIZE], composite  # the composite, as the node's preview shows it
    # Save Layers' preview shows the bundle by layer: its FG layers by name, back to front.
    page.wait_for_function(
        f"(id) => {APP}.graph.getNodeById(id).layerfusionPreview.element.dataset.state === 'ready'",
        arg=ran.save,
    )
    buttons = page.evaluate(
        f"""(id) => Array.from({APP}.graph.getNodeById(id).layerfusionPreview.element
            .querySelectorAll("button[data-layer]")).map((b) => [b.dataset.layer, b.textContent, b.disabled])""",
        ran.save,
    )
    assert buttons == [
        ["fg0", "armchair", False],
        ["fg1", "cat", False],
        ["bg", "BG", False],
        ["blended", "BLENDED", False],
        ["soft_mask", "SOFT MASK", False],
        ["hard_mask", "HARD MASK", False],
    ]
    saved = sorted(p.name for p in (server.output_dir / "browser").iterdir() if p.name.startswith("editor_"))
    stems = ["fg0_armchair", "fg1_cat"]
    masks = [f"{s}_{m}_mask" for s in stems for m in ("soft", "hard")]
    assert saved == sorted(f"editor_00001_{n}.png" for n in (*stems, "bg", "blended", *masks))
    page.screenshot(path=str(tmp_path / "layers_to_editor_run.png"))


@pytest.fixture
def nodes_2(page: Page) -> Iterator[None]:
    """The frontend's Nodes 2.0 on for the test (the compositor widget, with the layer editor's
    Open button, exists only there), off again afterwards."""
    page.evaluate(f"async (key) => await {APP}.ui.settings.setSettingValueAsync(key, true)", VUE_NODES)
    try:
        yield
    finally:
        page.keyboard.press("Escape")
        page.evaluate(f"async (key) => await {APP}.ui.settings.setSettingValueAsync(key, false)", VUE_NODES)


def test_the_layer_editor_shows_our_layers_and_exports_them(
    page: Page, server: ComfyServer, ran, nodes_2, tmp_path: Path
) -> None:
    # With Nodes 2.0 our preview still shows, and the frontend's own gallery does not repeat it.
    save = page.locator(f'[data-node-id="{ran.save}"]')
    assert save.locator(".layerfusion-preview").count() == 1
    assert save.locator("img").count() == 0
    open_button = page.locator(f'[data-node-id="{ran.compositor}"] [data-testid="compositor-open-button"]')
    assert open_button.is_enabled(), "the layer editor cannot open: Create Layered Image has no layers"
    open_button.click()
    rows = page.locator('[data-testid="layer-panel-row"]')
    rows.first.wait_for()
    page.wait_for_function(
        "(n) => document.querySelectorAll('[data-testid=\"layer-panel-row\"] span[title]').length === n",
        arg=len(OUR_LAYERS),
    )
    # The panel lists the layers top first: BLENDED (hidden), cat, armchair, bg.
    listed = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-testid="layer-panel-row"]')).map((row) =>
            [row.querySelector("span[title]").title, !row.querySelector("i").className.includes("eye-off")])"""
    )
    assert listed == [[name, name != "blended"] for name in reversed(OUR_LAYERS)]
    page.screenshot(path=str(tmp_path / "layer_editor.png"))

    export = page.locator('button[aria-label="Export PSD"]')
    assert export.is_enabled(), "PSD export is disabled (the editor's WebGL compositor did not start)"
    with page.expect_download(timeout=UI_TIMEOUT_MS) as download:
        export.click()
    psd_path = tmp_path / "layer_editor.psd"
    download.value.save_as(psd_path)
    psd_tools = pytest.importorskip(
        "psd_tools", reason='the PSD is checked with psd-tools: pip install "psd-tools>=1.14.3,<2"'
    )
    psd = psd_tools.PSDImage.open(psd_path)
    assert psd.size == (SIZE, SIZE)
    layers = [(layer.name, layer.visible) for layer in psd]
    assert layers[1:] == [(name, name != "blended") for name in OUR_LAYERS], layers  # above the editor's fill
    assert psd[0].kind == "solidcolorfill" and not psd[0].visible  # the editor's own background, hidden
    for index, name in enumerate(("fg0_armchair", "fg1_cat"), start=2):
        exported = np.asarray(psd[index].topil().convert("RGBA")).astype(int)
        with Image.open(server.output_dir / "browser" / f"editor_00001_{name}.png") as image:
            ours = np.asarray(image).astype(int)
        assert np.array_equal(exported[..., 3], ours[..., 3]), name  # our alpha, exactly
        opaque = ours[..., 3] == 255
        assert np.array_equal(exported[opaque][:, :3], ours[opaque][:, :3]), name
