"""ComfyUI's editor in headless Chromium (driven by Playwright's Python package, with the system
browser: no ``playwright install``), and pictures of a workflow's graph in it.

Shared by tools/make_workflow_thumbnails.py (which writes workflows/<name>.jpg) and the
browser test (which checks the shipped thumbnails and the preview extension).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

PACK_NAME = "ComfyUI-LayerFusion"
"""The pack's folder (and /extensions/, /workflow_templates/ name) on the scratch server."""
ENV_CHROMIUM = "LAYERFUSION_CHROMIUM"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 2400, "height": 1200}
THUMBNAIL_SIZE = (1200, 900)
# Frontend settings for a clean, reproducible editor: no first-run dialogs, no minimap, no
# canvas info or zoom menu over the graph, full-detail drawing at thumbnail zoom.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
}
APP = "window.comfyAPI.app.app"
API = "window.comfyAPI.api.api"


def find_chromium() -> str | None:
    """``$LAYERFUSION_CHROMIUM`` when it is a file, else chromium on PATH, else None."""
    explicit = os.environ.get(ENV_CHROMIUM)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_settings(base: Path) -> None:
    """SETTINGS as the default user's frontend settings of a server whose folders are under
    ``base`` (call before the server starts)."""
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))


@contextlib.contextmanager
def open_editor(
    url: str,
    chromium: str,
    profile: Path,
    node_types: Sequence[str],
    on_page_error: Callable[[str], None] | None = None,
) -> Iterator[Page]:
    """A Playwright page on the editor at ``url``, once the app is ready and ``node_types``
    are registered (a graph loaded before that gets placeholder nodes); closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
        )
        try:
            tab = context.pages[0] if context.pages else context.new_page()
            if on_page_error is not None:
                tab.on("pageerror", lambda exc: on_page_error(str(exc)))
            tab.goto(url)
            # The app object and its graph exist a moment before the node definitions are
            # registered; a graph loaded in between gets placeholder nodes.
            tab.wait_for_function(
                """(types) => window.comfyAPI?.app?.app?.vueAppReady &&
                    types.every((t) => window.LiteGraph?.registered_node_types?.[t])""",
                arg=list(node_types),
                timeout=60_000,
            )
            tab.wait_for_timeout(500)
            yield tab
        finally:
            context.close()


def load_template(page: Page, name: str) -> dict[str, Any]:
    """Load one of the pack's templates the way the templates dialog does (fetch it from
    ComfyUI's template route, then app.loadGraphData); return the file's JSON as served."""
    return page.evaluate(
        f"""async (name) => {{
            const response = await fetch({API}.apiURL(`/workflow_templates/{PACK_NAME}/${{name}}.json`));
            if (!response.ok) throw new Error(`template ${{name}}: HTTP ${{response.status}}`);
            const workflow = await response.json();
            await {APP}.loadGraphData(workflow, true, false, name);
            await new Promise((resolve) => setTimeout(resolve, 300));
            return workflow;
        }}""",
        name,
    )


def graph_screenshot(page: Page, label: str) -> bytes:
    """Fit the whole graph into the canvas, label the picture as a graph screenshot and
    return it as PNG bytes (the canvas area only, no menus)."""
    clip = page.evaluate(
        f"""async (label) => {{
            const app = {APP};
            const canvas = app.canvas;
            const rect = canvas.canvas.getBoundingClientRect();
            let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
            for (const node of app.graph.nodes) {{
                const title = node.constructor.title_mode === 1 ? 0 : 30;  // LiteGraph title height
                x0 = Math.min(x0, node.pos[0]);
                y0 = Math.min(y0, node.pos[1] - title);
                x1 = Math.max(x1, node.pos[0] + node.size[0]);
                y1 = Math.max(y1, node.pos[1] + node.size[1]);
            }}
            const margin = 24, caption = 34;
            const width = rect.width - 2 * margin, height = rect.height - 2 * margin - caption;
            const scale = Math.min(width / (x1 - x0), height / (y1 - y0), 1.2);
            canvas.ds.scale = scale;
            canvas.ds.offset = [margin / scale - x0, (margin + caption) / scale - y0];
            canvas.setDirty(true, true);
            let note = document.getElementById("layerfusion-graph-label");
            if (!note) {{
                note = document.createElement("div");
                note.id = "layerfusion-graph-label";
                note.style.cssText = "position:fixed;z-index:10000;padding:6px 12px;border-radius:6px;" +
                    "font:bold 18px sans-serif;color:#fff;background:#2f6fbf;pointer-events:none";
                document.body.append(note);
            }}
            note.textContent = label;
            note.style.left = `${{rect.x + margin}}px`;
            note.style.top = `${{rect.y + 8}}px`;
            await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
            await new Promise((resolve) => setTimeout(resolve, 300));
            return {{
                x: rect.x, y: rect.y,
                width: Math.min(rect.width, (x1 - x0) * scale + 2 * margin),
                height: Math.min(rect.height, (y1 - y0) * scale + 2 * margin + caption),
            }};
        }}""",
        label,
    )
    png = page.screenshot(clip=clip)
    page.evaluate("() => document.getElementById('layerfusion-graph-label')?.remove()")
    return png


def to_thumbnail(png: bytes) -> bytes:
    """Letterbox into THUMBNAIL_SIZE (4:3) on the canvas colour; JPEG."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    background = image.getpixel((image.width - 1, image.height - 1))
    sheet = Image.new("RGB", THUMBNAIL_SIZE, background)
    sheet.paste(image, ((THUMBNAIL_SIZE[0] - image.width) // 2, (THUMBNAIL_SIZE[1] - image.height) // 2))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def graph_thumbnail(page: Page, name: str) -> bytes:
    """The thumbnail of the workflow loaded as ``name``: its graph, captioned as a graph (not a
    generated result), letterboxed to THUMBNAIL_SIZE, JPEG."""
    return to_thumbnail(graph_screenshot(page, f"Workflow graph (editor screenshot, not a result): {name}"))
