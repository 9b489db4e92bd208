"""tools/layerfusion_run.py against a real ComfyUI server started on 127.0.0.1 for this module:
a core-nodes workflow (no models) runs and its image arrives in --out; refused workflows and an
unreachable server give one clear line and a non-zero exit status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scratch_comfyui.server as scratch_server
from layerfusion_headless.client import HTTP_TIMEOUT
from PIL import Image
from scratch_comfyui.server import ComfyServer, comfy_server, free_port
from support.comfy_import import REPO_ROOT, ComfyHost

RUN = REPO_ROOT / "tools" / "layerfusion_run.py"
HANG_LIMIT_S = 20 * 60
"""A command or a server start is stopped only when it hangs: a slow or busy machine is no
failure (a server that exits at startup is reported at once)."""


@pytest.fixture(scope="module")
def server(comfy_host: ComfyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scratch_server, "START_TIMEOUT_S", HANG_LIMIT_S)
        with comfy_server(comfy_host.root, tmp_path_factory.mktemp("comfy_server")) as s:
            yield s


def ui_node(node_id: int, kind: str, widgets: list[Any], inputs=(), outputs=()) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": kind,
        "pos": [100 * node_id, 100],
        "size": [200, 100],
        "flags": {},
        "order": node_id,
        "mode": 0,
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs],
        "properties": {},
        "widgets_values": widgets,
    }


def invert_workflow() -> dict[str, Any]:
    """EmptyImage (red, 40x24) -> Reroute -> ImageInvert -> SaveImage, plus a Note and a muted
    second SaveImage: core nodes only, no model files."""
    return {
        "last_node_id": 6,
        "last_link_id": 4,
        "nodes": [
            ui_node(1, "EmptyImage", [40, 24, 1, 0xFF0000], outputs=[("IMAGE", [1])]),
            ui_node(2, "Reroute", [], inputs=[("", "*", 1)], outputs=[("IMAGE", [2])]),
            ui_node(3, "ImageInvert", [], inputs=[("image", "IMAGE", 2)], outputs=[("IMAGE", [3, 4])]),
            ui_node(4, "SaveImage", ["headless/inverted"], inputs=[("images", "IMAGE", 3)]),
            {**ui_node(5, "SaveImage", ["muted"], inputs=[("images", "IMAGE", 4)]), "mode": 2},
            ui_node(6, "Note", ["core nodes only"]),
        ],
        "links": [
            [1, 1, 0, 2, 0, "*"],
            [2, 2, 0, 3, 0, "IMAGE"],
            [3, 3, 0, 4, 0, "IMAGE"],
            [4, 3, 0, 5, 0, "IMAGE"],
        ],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=HANG_LIMIT_S, check=False
    )


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def test_workflow_runs_and_the_image_arrives_in_out(server: ComfyServer, tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "invert.json", invert_workflow())
    out = tmp_path / "out"
    result = run_command(
        "--server", server.url, "--workflow", str(workflow), "--out", str(out), "--set", "EmptyImage.width=32"
    )
    assert result.returncode == 0, f"{result.stderr}\n--- server log ---\n{server.log_tail()}"
    written = [Path(line) for line in result.stdout.splitlines()]
    assert len(written) == 1
    assert written[0].parent == out / "headless" and written[0].name.startswith("inverted_")
    with Image.open(written[0]) as image:
        assert image.size == (32, 24)
        assert image.convert("RGB").getpixel((5, 5)) == (0, 255, 255)  # red inverted
    assert written[0].read_bytes() == (server.output_dir / "headless" / written[0].name).read_bytes()
    assert "executing 3 ImageInvert" in result.stderr
    assert not list(server.output_dir.glob("muted*"))
    with Image.open(written[0]) as image:  # dragged back into ComfyUI, it restores the graph
        assert json.loads(image.text["workflow"]) == invert_workflow()


def test_a_run_after_the_server_counter_restarted_keeps_the_earlier_file(
    server: ComfyServer, tmp_path: Path
) -> None:
    """The server numbers files from what its output folder holds: once the earlier file is
    gone there (cleaned up, another output folder), the next run reports the same name. The
    file already in --out stays; the new one gets a free name, printed and said."""
    workflow = write_json(tmp_path / "invert.json", invert_workflow())
    out = tmp_path / "out"
    common = ("--server", server.url, "--workflow", str(workflow), "--out", str(out))
    first = run_command(*common, "--set", "4.filename_prefix=restart/inverted")
    assert first.returncode == 0, f"{first.stderr}\n--- server log ---\n{server.log_tail()}"
    (earlier,) = (Path(line) for line in first.stdout.splitlines())
    kept = earlier.read_bytes()
    (server.output_dir / "restart" / earlier.name).unlink()  # the server's counter restarts
    second = run_command(
        *common, "--set", "4.filename_prefix=restart/inverted", "--set", "EmptyImage.width=16"
    )
    assert second.returncode == 0, f"{second.stderr}\n--- server log ---\n{server.log_tail()}"
    (written,) = (Path(line) for line in second.stdout.splitlines())
    assert written == earlier.with_name(f"{earlier.stem}-2{earlier.suffix}")
    assert earlier.read_bytes() == kept
    with Image.open(earlier) as first_image, Image.open(written) as second_image:
        assert (first_image.size, second_image.size) == ((40, 24), (16, 24))
    assert f"note: {earlier} exists already" in second.stderr


def test_missing_model_file_names_node_input_value_and_folder(server: ComfyServer, tmp_path: Path) -> None:
    workflow = {
        "nodes": [
            ui_node(
                1,
                "CheckpointLoaderSimple",
                ["sd_xl_base_1.0.safetensors"],
                outputs=[("MODEL", [1]), ("CLIP", [2]), ("VAE", [3])],
            ),
            ui_node(
                2,
                "CheckpointSave",
                ["checkpoints/copy"],
                inputs=[("model", "MODEL", 1), ("clip", "CLIP", 2), ("vae", "VAE", 3)],
            ),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 1, 2, 2, 2, "VAE"]],
    }
    path = write_json(tmp_path / "needs_model.json", workflow)
    result = run_command("--server", server.url, "--workflow", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert (
        "model file missing: node 1 (CheckpointLoaderSimple) input ckpt_name: 'sd_xl_base_1.0.safetensors'"
        in result.stderr
    )
    assert "ComfyUI/models/checkpoints/" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_node_type_says_the_pack_is_missing(server: ComfyServer, tmp_path: Path) -> None:
    workflow = invert_workflow()
    workflow["nodes"][2]["type"] = "LayerFusionTripletSampler"
    path = write_json(tmp_path / "unknown.json", workflow)
    result = run_command("--server", server.url, "--workflow", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "LayerFusionTripletSampler (node 3)" in line and "ComfyUI-LayerFusion is not installed" in line


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    workflow = write_json(tmp_path / "invert.json", invert_workflow())
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = run_command("--server", f"http://127.0.0.1:{port}", "--workflow", str(workflow))
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach ComfyUI at http://127.0.0.1:{port}")
    assert f"python main.py --listen 127.0.0.1 --port {port}" in line
    # Refused at once, not after waiting out the client's timeout for an answer.
    assert "refused" in line.lower() and "timed out" not in line
    assert time.monotonic() - started < HTTP_TIMEOUT
