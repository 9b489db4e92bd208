"""tools/layerfusion_run.py with hostile inputs: malformed workflows and addresses give one
line and exit 2, a --set typo is refused against /object_info, and a websocket that closes
or a server that dies mid-run is said as such, quickly (a local fake server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from layerfusion_headless.downloads import saved_files

RUN = Path(__file__).resolve().parents[2] / "tools" / "layerfusion_run.py"

OBJECT_INFO = {
    "EmptyImage": {
        "input": {
            "required": {
                "width": ["INT", {}],
                "height": ["INT", {}],
                "batch_size": ["INT", {}],
                "color": ["INT", {}],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size", "color"]},
        "output": ["IMAGE"],
        "output_node": False,
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}},
        "input_order": {"required": ["images", "filename_prefix"]},
        "output": [],
        "output_node": True,
    },
}
API_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}


def ui_workflow() -> dict[str, Any]:
    return {
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                "widgets_values": [8, 8, 1, 0],
            },
            {
                "id": 2,
                "type": "SaveImage",
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                "outputs": [],
                "widgets_values": ["x"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }


def run_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def info_file(tmp_path: Path) -> Path:
    path = tmp_path / "object_info.json"
    path.write_text(json.dumps(OBJECT_INFO))
    return path


def run_workflow(
    tmp_path: Path, info_file: Path, workflow: Any = None, raw: bytes | None = None, *extra: str
):
    path = tmp_path / "workflow.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(json.dumps(workflow))
    return run_command("--workflow", str(path), "--object-info", str(info_file), "--print-api", *extra)


def test_a_well_formed_workflow_converts(tmp_path, info_file):
    result = run_workflow(tmp_path, info_file, ui_workflow())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["2"]["inputs"]["images"] == ["1", 0]


def without_type():
    workflow = ui_workflow()
    del workflow["nodes"][1]["type"]
    return workflow


def text_link_id():
    workflow = ui_workflow()
    workflow["links"][0][0] = "one"
    return workflow


@pytest.mark.parametrize(
    "workflow,expected",
    [
        (without_type, "node 2 of the nodes list (id 2) has no type"),
        (text_link_id, "link 1 of the links list is"),
    ],
)
def test_malformed_ui_workflows_are_one_line_and_exit_2(tmp_path, info_file, workflow, expected):
    result = run_workflow(tmp_path, info_file, workflow())
    assert result.returncode == 2
    assert expected in one_line(result)


def test_a_non_utf8_file_is_one_line_and_exit_2(tmp_path, info_file):
    result = run_workflow(tmp_path, info_file, raw=b'{"nodes": ["\xff\xfe"]}')
    assert result.returncode == 2 and "is not UTF-8 text" in one_line(result)


def test_very_deep_json_is_one_line_and_exit_2(tmp_path, info_file):
    result = run_workflow(tmp_path, info_file, raw=b"[" * 100_000 + b"]" * 100_000)
    assert result.returncode == 2 and "nests JSON too deeply" in one_line(result)


@pytest.mark.parametrize(
    "server", ["http://127.0.0.1:abc", "ftp://127.0.0.1:8188", "http://:8188", "http://127.0.0.1:99999"]
)
def test_a_malformed_server_address_is_one_line_and_exit_2(tmp_path, info_file, server):
    result = run_workflow(tmp_path, info_file, ui_workflow(), None, "--server", server)
    assert result.returncode == 2 and one_line(result).startswith("error: --server: expected")


def test_a_set_of_an_input_the_node_lacks_is_refused(tmp_path, info_file):
    result = run_workflow(tmp_path, info_file, ui_workflow(), None, "--set", "EmptyImage.widht=16")
    assert result.returncode == 2
    line = one_line(result)
    assert "node 1 (EmptyImage) has no input 'widht'" in line and "width, height, batch_size, color" in line
    good = run_workflow(tmp_path, info_file, ui_workflow(), None, "--set", "EmptyImage.width=16")
    assert good.returncode == 0 and json.loads(good.stdout)["1"]["inputs"]["width"] == 16


# -- a fake server: the websocket closes, or the whole server dies, right after queueing --


class FakeServer:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.posted: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        app = web.Application()

        async def object_info(request):
            return web.json_response(OBJECT_INFO)

        async def prompt(request):
            self.posted.append(await request.json())
            if self.mode == "dies":
                self.loop.call_later(0.2, lambda: asyncio.ensure_future(self.runner.cleanup()))
            return web.json_response(
                {"prompt_id": self.posted[-1]["prompt_id"], "number": 0, "node_errors": {}}
            )

        async def ws(request):
            socket = web.WebSocketResponse()
            await socket.prepare(request)
            while not self.posted:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            await socket.close()
            return socket

        async def history(request):
            return web.json_response({})

        async def queue(request):
            return web.json_response({"queue_running": [], "queue_pending": []})

        app.add_routes([
            web.get("/object_info", object_info), web.post("/prompt", prompt), web.get("/ws", ws),
            web.get("/history/{id}", history), web.get("/queue", queue),
        ])  # fmt: skip
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake(request) -> Iterator[FakeServer]:
    pytest.importorskip("aiohttp")
    with FakeServer(request.param) as server:
        yield server


def queue_api_prompt(tmp_path: Path, server: FakeServer) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "api.json"
    path.write_text(json.dumps(API_PROMPT))
    started = time.monotonic()
    result = run_command(
        "--server", server.url, "--workflow", str(path), "--out", str(tmp_path / "out"), timeout=60
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("fake", ["closes"], indirect=True)
def test_a_websocket_closing_mid_run_is_said_and_the_lost_job_stops_the_wait(tmp_path, fake):
    result, took = queue_api_prompt(tmp_path, fake)
    assert result.returncode == 1, result.stderr
    assert "the websocket to" in result.stderr and "closed before the job ended" in result.stderr
    assert "is neither queued, running nor finished" in result.stderr.strip().splitlines()[-1]
    assert took < 30


@pytest.mark.parametrize("fake", ["dies"], indirect=True)
def test_a_server_dying_mid_run_is_not_reported_as_never_started(tmp_path, fake):
    result, took = queue_api_prompt(tmp_path, fake)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "stopped answering while the job ran" in last and "start it first" not in last
    assert took < 30


@pytest.mark.parametrize("fake", ["closes"], indirect=True)
def test_a_ui_workflow_is_sent_as_extra_png_info(tmp_path, fake):
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui_workflow()))
    run_command("--server", fake.url, "--workflow", str(path), "--out", str(tmp_path / "out"), timeout=60)
    assert fake.posted and fake.posted[0]["extra_data"]["extra_pnginfo"]["workflow"] == ui_workflow()


def test_files_reported_besides_the_shown_images_are_collected():
    entry = {
        "outputs": {
            "9": {
                "images": [{"filename": "l_00001_fg.png", "subfolder": "L", "type": "output"}],
                "layerfusion_files": [
                    {"filename": "l_00001_soft_mask.png", "subfolder": "L", "type": "output"},
                    {"filename": "l_00001_layers.psd", "subfolder": "L", "type": "output"},
                ],
            }
        }
    }
    names = [f.filename for f in saved_files(entry)]
    assert names == ["l_00001_fg.png", "l_00001_soft_mask.png", "l_00001_layers.psd"]
