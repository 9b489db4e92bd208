#!/usr/bin/env python3
"""Make the thumbnails of the shipped workflows: ``workflows/<name>.jpg``, a screenshot of each
workflow's graph in ComfyUI's editor (captioned as a graph, not a generated result), which
ComfyUI's template browser shows next to the template.

    python tools/make_workflow_thumbnails.py --comfyui <ComfyUI folder> [NAME ...]

Run it with ComfyUI's Python: it starts that ComfyUI (``main.py --cpu`` on a free 127.0.0.1
port, every folder it writes in a temporary folder) with this pack, opens the editor in
headless Chromium through the playwright package (the system's chromium, or
``$LAYERFUSION_CHROMIUM``; no ``playwright install``), loads each template as the templates
dialog does and writes its thumbnail. Without NAMEs it makes every workflow's. No model file
is needed. Exit status: 0 done, 1 a workflow failed, 2 bad arguments or nothing to run with.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # the scratch_comfyui package beside this script

from scratch_comfyui import editor, server  # noqa: E402

REPO_ROOT = _HERE.parent
WORKFLOWS = REPO_ROOT / "workflows"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_workflow_thumbnails.py",
        description="Write workflows/<name>.jpg: each shipped workflow's graph in ComfyUI's editor.",
    )
    parser.add_argument(
        "--comfyui",
        default=os.environ.get("COMFYUI_PATH"),
        help="the ComfyUI folder (with main.py) to start; default $COMFYUI_PATH",
    )
    parser.add_argument("names", nargs="*", help="workflow names (file stems); default all")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    root = Path(args.comfyui).expanduser() if args.comfyui else None
    if root is None or not (root / "main.py").is_file():
        print("error: pass --comfyui <ComfyUI folder> (or set COMFYUI_PATH)", file=sys.stderr)
        return 2
    chromium = editor.find_chromium()
    if chromium is None:
        print(
            "error: no chromium (apt-get install -y chromium, or set LAYERFUSION_CHROMIUM)", file=sys.stderr
        )
        return 2
    if importlib.util.find_spec("playwright") is None:
        print(
            "error: the playwright package is missing: pip install playwright (no browser download)",
            file=sys.stderr,
        )
        return 2
    names = args.names or sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    unknown = [n for n in names if not (WORKFLOWS / f"{n}.json").is_file()]
    if unknown:
        print(f"error: no workflows/{unknown[0]}.json", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="layerfusion_thumbnails_") as scratch:
        base = Path(scratch)
        editor.write_settings(base)
        try:
            with (
                server.comfy_server(
                    root,
                    base,
                    custom_nodes={editor.PACK_NAME: REPO_ROOT},
                    env={"PYTHONDONTWRITEBYTECODE": "1"},
                ) as scratch_server,
                editor.open_editor(
                    scratch_server.url, chromium, base / "chromium_profile", ["LayerFusionSaveLayers"]
                ) as page,
            ):
                for name in names:
                    editor.load_template(page, name)
                    target = WORKFLOWS / f"{name}.jpg"
                    target.write_bytes(editor.graph_thumbnail(page, name))
                    print(os.fspath(target), flush=True)
        except server.ServerStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # a template that does not load, a browser that fails
            print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
