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
from layerfusion_headless.downloads import SavedFile, download_saved, saved_files
from layerfusion_headless.errors import RunError

RUN = Path(__file__).resolve().parents[2] / "tools" / "layerfusion_run.py"
HANG_LIMIT_S = 20 * 60
"""A command is stopped only when it hangs: a slow or busy machine is no failure."""
JOB_TIMEOUT_S = 15 * 60
"""--timeout for a job the fake server loses: the command must end by saying so, not by
waiting this out (which would end in "did not finish within")."""

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


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=HANG_LIMIT_S, check=False
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
    """``closes``: the websocket closes right after queueing; ``dies``: the whole server stops;
    ``done``: the job ends at once and its history reports ``files`` (filename, subfolder),
    which /view serves as ``body``."""

    def __init__(self, mode: str, files: list[tuple[str, str]] | None = None, body: bytes = b"new") -> None:
        self.mode = mode
        self.files = files or [("ok_00001_.png", "")]
        self.body = body
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
            if self.mode == "done":
                prompt_id = self.posted[-1]["prompt_id"]
                await socket.send_json({"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})
            await asyncio.sleep(0.1)
            await socket.close()
            return socket

        async def history(request):
            prompt_id = request.match_info["id"]
            if self.mode != "done" or not self.posted or self.posted[-1]["prompt_id"] != prompt_id:
                return web.json_response({})
            images = [{"filename": f, "subfolder": s, "type": "output"} for f, s in self.files]
            entry = {"status": {"status_str": "success"}, "outputs": {"2": {"images": images}}}
            return web.json_response({prompt_id: entry})

        async def view(request):
            return web.Response(body=self.body, content_type="image/png")

        async def queue(request):
            return web.json_response({"queue_running": [], "queue_pending": []})

        app.add_routes([
            web.get("/object_info", object_info), web.post("/prompt", prompt), web.get("/ws", ws),
            web.get("/history/{id}", history), web.get("/queue", queue), web.get("/view", view),
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
    mode, *files = request.param if isinstance(request.param, tuple) else (request.param,)
    with FakeServer(mode, list(files) or None) as server:
        yield server


def queue_api_prompt(tmp_path: Path, server: FakeServer) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "api.json"
    path.write_text(json.dumps(API_PROMPT))
    started = time.monotonic()
    result = run_command(
        "--server", server.url, "--workflow", str(path), "--out", str(tmp_path / "out"),
        "--timeout", str(JOB_TIMEOUT_S),
    )  # fmt: skip
    return result, time.monotonic() - started


@pytest.mark.parametrize("fake", ["closes"], indirect=True)
def test_a_websocket_closing_mid_run_is_said_and_the_lost_job_stops_the_wait(tmp_path, fake):
    result, took = queue_api_prompt(tmp_path, fake)
    assert result.returncode == 1, result.stderr
    assert "the websocket to" in result.stderr and "closed before the job ended" in result.stderr
    assert "is neither queued, running nor finished" in result.stderr.strip().splitlines()[-1]
    assert took < JOB_TIMEOUT_S and "did not finish within" not in result.stderr


@pytest.mark.parametrize("fake", ["dies"], indirect=True)
def test_a_server_dying_mid_run_is_not_reported_as_never_started(tmp_path, fake):
    result, took = queue_api_prompt(tmp_path, fake)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "stopped answering while the job ran" in last and "start it first" not in last
    assert took < JOB_TIMEOUT_S and "did not finish within" not in result.stderr


@pytest.mark.parametrize("fake", ["closes"], indirect=True)
def test_a_ui_workflow_is_sent_as_extra_png_info(tmp_path, fake):
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui_workflow()))
    run_command("--server", fake.url, "--workflow", str(path), "--out", str(tmp_path / "out"))
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


# -- downloads: never over a file already in --out, never outside it --


class StubClient:
    """What download_saved needs of ComfyClient: /view answers ``body``."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.asked: list[str] = []

    def get_bytes(self, path: str) -> bytes:
        self.asked.append(path)
        return self.body


def test_a_download_never_replaces_a_file_already_in_out(tmp_path):
    out = tmp_path / "out"
    (out / "L").mkdir(parents=True)
    earlier = out / "L" / "l_00001_fg.png"
    earlier.write_bytes(b"an earlier run")
    files = [SavedFile("9", n, "L", "output") for n in ("l_00001_fg.png", "l_00001_bg.png")]
    notes: list[str] = []
    written = download_saved(StubClient(b"this run"), files, out, notes.append)
    assert earlier.read_bytes() == b"an earlier run"
    # One job's files keep one name pattern: the free bg name is numbered like the fg one.
    assert written == [out / "L" / "l_00001_fg-2.png", out / "L" / "l_00001_bg-2.png"]
    assert all(path.read_bytes() == b"this run" for path in written)
    assert sorted(p.name for p in (out / "L").iterdir()) == [
        "l_00001_bg-2.png", "l_00001_fg-2.png", "l_00001_fg.png",
    ]  # fmt: skip
    (note,) = notes
    assert "l_00001_fg.png" in note and "l_00001_fg-2.png" in note


def test_two_files_of_one_job_with_one_local_name_are_both_kept(tmp_path):
    files = [SavedFile("9", "p.png", "", "output"), SavedFile("9", "p.png", "", "temp")]
    written = download_saved(StubClient(b"x"), files, tmp_path)
    assert written == [tmp_path / "p.png", tmp_path / "p-2.png"]


HOSTILE_NAMES = [
    ("..\\..\\evil.png", ""),
    ("C:\\Windows\\evil.png", ""),
    ("C:evil.png", ""),
    ("\\\\server\\share\\x.png", ""),
    ("x.png", "..\\.."),
    ("x.png", "C:\\Windows"),
    ("x.png", "C:"),
    ("x.png", "\\\\server\\share"),
    ("/etc/evil.png", ""),
    ("x.png", "/etc"),
    ("x.png", "//server/share"),
    ("../evil.png", ""),
    ("x.png", "a/../.."),
]


@pytest.mark.parametrize("filename,subfolder", HOSTILE_NAMES)
def test_server_names_that_leave_out_on_some_system_are_refused_on_every_system(
    tmp_path, filename, subfolder
):
    """A Windows path (backslashes, drive letters, UNC) is one harmless name on Linux, but the
    same server answer makes the command write outside --out on Windows: refused everywhere,
    naming the name, before anything is fetched."""
    client = StubClient(b"x")
    out = tmp_path / "out"
    files = [SavedFile("9", "fine.png", "", "output"), SavedFile("9", filename, subfolder, "output")]
    with pytest.raises(RunError) as caught:
        download_saved(client, files, out)
    bad = subfolder if subfolder else filename
    assert repr(bad) in str(caught.value)
    assert client.asked == []
    assert not out.exists() or not any(out.rglob("*"))


def run_job(tmp_path: Path, server: FakeServer, out: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "api.json"
    path.write_text(json.dumps(API_PROMPT))
    return run_command("--server", server.url, "--workflow", str(path), "--out", str(out))


@pytest.mark.parametrize("fake", [("done", ("ok_00001_.png", ""))], indirect=True)
def test_a_second_run_whose_server_counter_restarted_keeps_the_first_runs_file(tmp_path, fake):
    out = tmp_path / "out"
    first = run_job(tmp_path, fake, out)
    assert first.returncode == 0, first.stderr
    fake.body = b"second run"
    second = run_job(tmp_path, fake, out)
    assert second.returncode == 0, second.stderr
    assert first.stdout.splitlines() == [str(out / "ok_00001_.png")]
    assert second.stdout.splitlines() == [str(out / "ok_00001_-2.png")]
    assert (out / "ok_00001_.png").read_bytes() == b"new"
    assert (out / "ok_00001_-2.png").read_bytes() == b"second run"
    assert "ok_00001_-2.png" in second.stderr  # said, not only printed as a path


@pytest.mark.parametrize("fake", [("done", ("..\\..\\evil.png", ""))], indirect=True)
def test_a_windows_path_from_the_server_is_one_line_and_nothing_is_written(tmp_path, fake):
    out = tmp_path / "work" / "out"
    result = run_job(tmp_path, fake, out)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing") and repr("..\\..\\evil.png") in last, last
    assert not out.exists() or not any(out.rglob("*"))
    assert not [p for p in tmp_path.rglob("*evil*")]


# -- the size options scale boxes and moves, which are pixels of the canvas --


def int_input(low: int, high: int, step: int = 8) -> list[Any]:
    return ["INT", {"default": 0, "min": low, "max": high, "step": step}]


LAYOUT_INFO = {
    "EmptyLatentImage": {
        "input": {"required": {n: int_input(16, 16384) for n in ("width", "height")}},
        "output": ["LATENT"],
    },
    "LayerFusionLayerPrompt": {
        "input": {
            "required": {n: int_input(0, 16384) for n in ("x", "y", "width", "height")},
            "optional": {"layers": ["LAYERFUSION_LAYER_PROMPTS"]},
        },
        "output": ["LAYERFUSION_LAYER_PROMPTS"],
    },
    "LayerFusionLayersSampler": {
        "input": {"required": {"layers": ["LAYERFUSION_LAYER_PROMPTS"], "latent_image": ["LATENT"]}},
        "output": ["LAYERFUSION_LAYER_BUNDLE", "LATENT"],
    },
    "LayerFusionDecodeLayers": {
        "input": {"required": {"bundle": ["LAYERFUSION_LAYER_BUNDLE"]}},
        "output": ["LAYERFUSION_LAYER_BUNDLE"],
    },
    "LayerFusionReharmonize": {
        "input": {
            "required": {
                "bundle": ["LAYERFUSION_LAYER_BUNDLE"],
                **{f"fg{k}_d{a}": int_input(-16384, 16384) for k in (0, 1) for a in "xy"},
            }
        },
        "output": ["LAYERFUSION_LAYER_BUNDLE"],
    },
}


def layout_prompt(dx: int = -384) -> dict[str, Any]:
    """A chain of two layers (the front one in a box) on a 1024x1024 canvas, sampled, decoded and
    the front one moved by ``dx``: the shipped move-and-reharmonize workflow's layout."""
    return {
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024}},
        "5": {"class_type": "LayerFusionLayerPrompt", "inputs": {"x": 0, "y": 0, "width": 0, "height": 0}},
        "6": {
            "class_type": "LayerFusionLayerPrompt",
            "inputs": {"x": 512, "y": 384, "width": 384, "height": 512, "layers": ["5", 0]},
        },
        "7": {
            "class_type": "LayerFusionLayersSampler",
            "inputs": {"layers": ["6", 0], "latent_image": ["4", 0]},
        },
        "8": {"class_type": "LayerFusionDecodeLayers", "inputs": {"bundle": ["7", 0]}},
        "9": {
            "class_type": "LayerFusionReharmonize",
            "inputs": {"bundle": ["8", 0], "fg0_dx": 0, "fg0_dy": 0, "fg1_dx": dx, "fg1_dy": 0},
        },
    }


def print_layout(tmp_path: Path, prompt: dict[str, Any], *extra: str) -> dict[str, Any]:
    (tmp_path / "layout.json").write_text(json.dumps(prompt))
    (tmp_path / "layout_info.json").write_text(json.dumps(LAYOUT_INFO))
    result = run_command(
        "--workflow", str(tmp_path / "layout.json"), "--object-info", str(tmp_path / "layout_info.json"),
        "--print-api", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def box(prompt: dict[str, Any], node_id: str) -> tuple[int, int, int, int]:
    inputs = prompt[node_id]["inputs"]
    return inputs["x"], inputs["y"], inputs["width"], inputs["height"]


@pytest.mark.parametrize(
    "size,expected_box,expected_dx",
    [((256, 256), (128, 96, 96, 128), -96), ((512, 768), (256, 288, 192, 384), -192)],
)
def test_the_size_options_scale_boxes_and_moves_with_the_canvas(tmp_path, size, expected_box, expected_dx):
    width, height = size
    prompt = print_layout(tmp_path, layout_prompt(), "--width", str(width), "--height", str(height))
    assert (prompt["4"]["inputs"]["width"], prompt["4"]["inputs"]["height"]) == size
    assert box(prompt, "6") == expected_box
    assert box(prompt, "5") == (0, 0, 0, 0)  # no box stays no box
    assert (prompt["9"]["inputs"]["fg1_dx"], prompt["9"]["inputs"]["fg1_dy"]) == (expected_dx, 0)


def test_scaled_values_stay_on_the_step_inside_the_canvas_and_a_set_wins(tmp_path):
    # A move of nearly the whole canvas would round to the canvas's width: it stays shorter.
    prompt = print_layout(tmp_path, layout_prompt(dx=-1016), "--width", "256", "--height", "256")
    assert prompt["9"]["inputs"]["fg1_dx"] == -248
    # 1024 -> 200: the box's edges at x 100 and 175, y 75 and 175 go onto the step of 8.
    prompt = print_layout(tmp_path, layout_prompt(), "--width", "200", "--height", "200")
    assert box(prompt, "6") == (104, 72, 72, 104)
    # --width alone: only x and width scale.
    prompt = print_layout(tmp_path, layout_prompt(), "--width", "512")
    assert box(prompt, "6") == (256, 384, 192, 512)
    sets = ("--set", "6.x=8", "--set", "9.fg1_dx=-16")
    prompt = print_layout(tmp_path, layout_prompt(), "--width", "256", "--height", "256", *sets)
    assert box(prompt, "6") == (8, 96, 96, 128) and prompt["9"]["inputs"]["fg1_dx"] == -16
