#!/usr/bin/env python3
"""Run a ComfyUI workflow headless on a running ComfyUI and collect the files it saves.

    python3 tools/layerfusion_run.py --workflow workflows/<name>.json \\
        --fg "a glass teapot" --bg "a sunny kitchen table" --seed 7 --out layers/

Loads a UI-format workflow (as ComfyUI saves it, as shipped in workflows/; an API-format
prompt works too), converts it to the API format with the server's /object_info, applies the
overrides, queues it (POST /prompt), shows progress from the websocket on stderr, then
downloads every file the save nodes wrote into --out and prints their paths on stdout.

Standard library only, plus aiohttp (which ComfyUI's environment has) for live progress over
the websocket; without aiohttp it polls /history instead. It never imports ComfyUI or torch.
Exit status: 0 done, 1 the job failed or was refused, 2 bad arguments or workflow,
3 server unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # also when run as `python -m tools.layerfusion_run`
    sys.path.insert(0, str(_HERE))

from comfy_api_format import (  # noqa: E402
    SetOverride,
    UnknownNodeTypeError,
    WorkflowError,
    apply_overrides,
    convert_workflow,
    is_api_prompt,
    is_ui_workflow,
    parse_set_override,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_SERVER = "http://127.0.0.1:8188"
HTTP_TIMEOUT = 60.0
POLL_SECONDS = 0.5
HISTORY_GRACE_SECONDS = 30.0
PACK_PREFIX = "LayerFusion"
# Where the core loaders' files live, for a value-not-in-list error on one of these inputs
# when the server's folder listings cannot tell (e.g. several empty folders).
INPUT_NAME_FOLDERS = {
    "ckpt_name": "checkpoints",
    "vae_name": "vae",
    "lora_name": "loras",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
}
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


class RunError(Exception):
    """A failure to report as one line, with the exit status to use."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------
# Talking to the server
# ---------------------------------------------------------------------------------------


def normalise_server(url: str) -> str:
    """``url`` as ``http(s)://host[:port]``; RunError (exit 2) for anything else."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RunError(
            f"--server: expected an address like {DEFAULT_SERVER}, got {url!r} ({exc})", EXIT_USAGE
        ) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise RunError(f"--server: expected an address like {DEFAULT_SERVER}, got {url!r}", EXIT_USAGE)
    if port == 0:
        raise RunError(f"--server: expected a port from 1 to 65535, got {url!r}", EXIT_USAGE)
    return url


def start_hint(server: str) -> str:
    parsed = urllib.parse.urlsplit(server)
    port = parsed.port or 8188
    host = parsed.hostname or "127.0.0.1"
    return (
        f"start it first, from your ComfyUI folder: python main.py --listen {host} --port {port} "
        f"(and pass --server {server})"
    )


class ComfyClient:
    """Blocking JSON/HTTP calls to one ComfyUI server (urllib)."""

    def __init__(self, server: str, timeout: float = HTTP_TIMEOUT) -> None:
        self.server = normalise_server(server)
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.server).hostname or ""
        handlers: list[Any] = []
        if host in ("127.0.0.1", "localhost", "::1"):
            handlers.append(urllib.request.ProxyHandler({}))  # never send loopback through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def _open(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.server + path, data=body, method="POST" if body else "GET")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RunError(
                f"cannot reach ComfyUI at {self.server} ({reason}); {start_hint(self.server)}",
                EXIT_UNREACHABLE,
            ) from exc

    def get_json(self, path: str) -> Any:
        status, data = self._open(path)
        if status != 200:
            raise RunError(f"{self.server}{path} answered HTTP {status}: is this a ComfyUI server?")
        return _json(data, f"{self.server}{path}")

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, data = self._open(path, json.dumps(payload).encode())
        return status, _json(data, f"{self.server}{path}") if data else {}

    def get_bytes(self, path: str) -> bytes:
        status, data = self._open(path)
        if status != 200:
            raise RunError(f"{self.server}{path} answered HTTP {status}")
        return data

    def ws_url(self, client_id: str) -> str:
        parts = urllib.parse.urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit(
            (scheme, parts.netloc, parts.path + "/ws", f"clientId={client_id}", "")
        )


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise RunError(f"{where} did not answer JSON: {data[:120]!r}") from exc


# ---------------------------------------------------------------------------------------
# Workflow and overrides
# ---------------------------------------------------------------------------------------


def load_workflow(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RunError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save the workflow as JSON",
            EXIT_USAGE,
        ) from exc
    except OSError as exc:
        raise RunError(f"cannot read the workflow {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", EXIT_USAGE
        ) from exc
    except RecursionError as exc:
        raise RunError(f"{path} nests JSON too deeply to be a workflow", EXIT_USAGE) from exc
    if is_ui_workflow(data):
        check_ui_shape(data, path)
    if isinstance(data, Mapping) and is_api_prompt(data.get("prompt")):
        data = data["prompt"]
    if not (is_ui_workflow(data) or is_api_prompt(data)):
        raise RunError(
            f"{path} is neither a UI-format workflow (with a 'nodes' list) nor an API-format prompt",
            EXIT_USAGE,
        )
    return data


def check_ui_shape(workflow: Mapping[str, Any], path: str) -> None:
    """The fields the conversion relies on: every node has an id and a ``type`` string,
    every link a numeric id and endpoints. RunError (exit 2) naming the first bad one."""
    for index, node in enumerate(workflow.get("nodes") or []):
        where = f"{path}: node {index + 1} of the nodes list"
        if not isinstance(node, Mapping):
            raise RunError(f"{where} is not an object", EXIT_USAGE)
        if not isinstance(node.get("id"), (int, str)) or isinstance(node.get("id"), bool):
            raise RunError(f"{where} has no id", EXIT_USAGE)
        if not isinstance(node.get("type"), str) or not node["type"]:
            raise RunError(f"{where} (id {node['id']}) has no type (the node's class name)", EXIT_USAGE)
    for index, link in enumerate(workflow.get("links") or []):
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
        fields = [link.get(k) for k in keys] if isinstance(link, Mapping) else link
        numeric = (
            isinstance(fields, list)
            and len(fields) >= 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in fields[:5])
        )
        if not numeric:
            raise RunError(
                f"{path}: link {index + 1} of the links list is {link!r}; expected [id, from node, from slot, "
                "to node, to slot, type] with whole numbers",
                EXIT_USAGE,
            )


def unknown_type_message(exc: UnknownNodeTypeError, server: str) -> str:
    if any(kind.startswith(PACK_PREFIX) for kind in exc.class_types):
        fix = (
            "ComfyUI-LayerFusion is not installed or failed to load on that server: put it in "
            "ComfyUI/custom_nodes/, restart ComfyUI and check its startup log for import errors"
        )
    else:
        fix = "install the custom node pack that provides it (e.g. with ComfyUI Manager) and restart ComfyUI"
    return f"{exc} (server {server}); {fix}"


def build_prompt(
    workflow: Any,
    object_info: Mapping[str, Any],
    named: Mapping[str, Any],
    sets: Sequence[SetOverride],
    server: str,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The API prompt with overrides applied, and notes for the user."""
    notes: list[str] = []
    try:
        if is_ui_workflow(workflow):
            conversion = convert_workflow(workflow, object_info)
            prompt, notes = conversion.prompt, list(conversion.notes)
        else:
            prompt = json.loads(json.dumps(workflow))
            unknown = [
                (nid, n["class_type"]) for nid, n in prompt.items() if n["class_type"] not in object_info
            ]
            if unknown:
                raise UnknownNodeTypeError(unknown)
        notes += [f"set {change}" for change in apply_overrides(prompt, named, sets, object_info)]
    except UnknownNodeTypeError as exc:
        raise RunError(unknown_type_message(exc, server), EXIT_USAGE) from exc
    except WorkflowError as exc:
        raise RunError(str(exc), EXIT_USAGE) from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise RunError(f"the workflow is malformed ({type(exc).__name__}: {exc})", EXIT_USAGE) from exc
    if not prompt:
        raise RunError("the workflow has no nodes to run", EXIT_USAGE)
    return prompt, notes


# ---------------------------------------------------------------------------------------
# Explaining a refused prompt
# ---------------------------------------------------------------------------------------


def _load_model_files() -> ModuleType | None:
    """layerfusion_core/files/known.py (pure Python) for download hints, or None."""
    path = _HERE.parent / "layerfusion_core" / "files" / "known.py"
    try:
        spec = importlib.util.spec_from_file_location("_layerfusion_model_files", path)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    except Exception:
        return None


def combo_options(object_info: Mapping[str, Any], class_type: str, input_name: str) -> tuple[list[Any], Any]:
    """(options, spec options dict) of a combo input, or ([], {}) when unknown."""
    info = object_info.get(class_type)
    if not isinstance(info, Mapping):
        return [], {}
    for section in ("required", "optional"):
        raw = (info.get("input", {}).get(section) or {}).get(input_name)
        if isinstance(raw, list) and raw:
            extra = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
            if isinstance(raw[0], list):
                return list(raw[0]), extra
            return list(extra.get("options") or []), extra
    return [], {}


@dataclass
class FolderFinder:
    """Which models/ folder a combo lists: the folder whose files (GET /models/<folder>) are
    the combo's options; name-based rules settle ties such as several empty folders."""

    client: ComfyClient | None
    model_files: ModuleType | None
    _listing: dict[str, list[str]] | None = None

    def listing(self) -> dict[str, list[str]]:
        if self._listing is None:
            self._listing = {}
            if self.client is not None:
                with contextlib.suppress(RunError):
                    for folder in self.client.get_json("/models"):
                        with contextlib.suppress(RunError):
                            self._listing[folder] = list(self.client.get_json(f"/models/{folder}"))
        return self._listing

    def known_file(self, value: Any) -> Any:
        if self.model_files is None or not isinstance(value, str):
            return None
        return self.model_files.BY_NAME.get(value)

    def folder(self, class_type: str, input_name: str, value: Any, options: list[Any]) -> str | None:
        if self.known_file(value) is not None:
            return "layer_model"
        candidates = [name for name, files in self.listing().items() if set(files) == set(options)]
        if len(candidates) == 1:
            return candidates[0]
        hinted = INPUT_NAME_FOLDERS.get(input_name)
        if class_type.startswith(PACK_PREFIX) and isinstance(value, str) and value.endswith(MODEL_SUFFIXES):
            hinted = "layer_model"
        if hinted and (not candidates or hinted in candidates):
            return hinted
        return None


def describe_node_error(
    node_id: str,
    class_type: str,
    error: Mapping[str, Any],
    object_info: Mapping[str, Any],
    finder: FolderFinder,
) -> str:
    extra = error.get("extra_info") or {}
    input_name = extra.get("input_name")
    where = f"node {node_id} ({class_type})" + (f" input {input_name}" if input_name else "")
    if error.get("type") == "value_not_in_list" and input_name:
        value = extra.get("received_value")
        options, spec = combo_options(object_info, class_type, input_name)
        if any(spec.get(k) for k in ("image_upload", "video_upload", "animated_image_upload")):
            folder = spec.get("image_folder", "input")
            return f"file missing: {where}: {value!r} is not in ComfyUI's {folder} folder; put it there"
        folder = finder.folder(class_type, input_name, value, options)
        looks_like_model = isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES)
        if folder or looks_like_model:
            place = f"ComfyUI/models/{folder}/" if folder else "the ComfyUI models folder this input lists"
            known = finder.known_file(value)
            download = f"; download it from {known.url}{known.name}" if known is not None else ""
            return (
                f"model file missing: {where}: {value!r} is not on the server; put it into {place} "
                f"(or a folder extra_model_paths.yaml adds){download}"
            )
        shown = ", ".join(map(repr, options[:8])) + (", ..." if len(options) > 8 else "")
        return f"{where}: {value!r} is not an allowed value (allowed: {shown})"
    message = error.get("message", "error")
    details = error.get("details")
    return f"{where}: {message}" + (f": {details}" if details else "")


def describe_refusal(
    answer: Mapping[str, Any], object_info: Mapping[str, Any], finder: FolderFinder
) -> list[str]:
    """One line per problem in a /prompt answer's ``error`` and ``node_errors``."""
    lines: list[str] = []
    for node_id, entry in (answer.get("node_errors") or {}).items():
        class_type = entry.get("class_type", "?")
        for error in entry.get("errors") or []:
            lines.append(describe_node_error(str(node_id), class_type, error, object_info, finder))
    error = answer.get("error")
    if not lines and error:
        if isinstance(error, Mapping):
            details = error.get("details")
            lines.append(f"{error.get('message', 'refused')}" + (f": {details}" if details else ""))
        else:
            lines.append(str(error))
    return lines or ["the server refused the prompt without saying why"]


# ---------------------------------------------------------------------------------------
# Following the job
# ---------------------------------------------------------------------------------------


class Reporter:
    """Progress lines on stderr (quiet: none)."""

    def __init__(self, prompt: Mapping[str, Mapping[str, Any]], quiet: bool = False) -> None:
        self.prompt = prompt
        self.quiet = quiet
        self._last: tuple[Any, float, float] = (None, -1.0, 0.0)

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def node_name(self, node_id: Any) -> str:
        node = self.prompt.get(str(node_id), {})
        title = (node.get("_meta") or {}).get("title")
        kind = node.get("class_type", "?")
        return f"{node_id} {kind}" + (f" ({title})" if title and title != kind else "")

    def progress(self, node_id: Any, value: float, maximum: float) -> None:
        now = time.monotonic()
        last_node, last_fraction, last_time = self._last
        fraction = value / maximum if maximum else 1.0
        if (
            node_id == last_node
            and value < maximum
            and fraction - last_fraction < 0.1
            and now - last_time < 2
        ):
            return
        self._last = (node_id, fraction, now)
        self.line(f"  step {value:g}/{maximum:g}")


@dataclass
class Outcome:
    ok: bool
    message: str = ""


def handle_event(event: str, data: Mapping[str, Any], prompt_id: str, reporter: Reporter) -> Outcome | None:
    """React to one websocket event; return the outcome once the job is over."""
    if not isinstance(data, Mapping) or data.get("prompt_id") not in (None, prompt_id):
        return None
    if event == "execution_start":
        reporter.line(f"running prompt {prompt_id}")
    elif event == "execution_cached":
        cached = data.get("nodes") or []
        if cached:
            reporter.line(f"cached: {len(cached)} node(s) reused from an earlier run")
    elif event == "executing":
        node = data.get("node")
        if node is None:
            return Outcome(True) if data.get("prompt_id") == prompt_id else None
        reporter.line(f"executing {reporter.node_name(node)}")
    elif event == "progress":
        reporter.progress(data.get("node"), float(data.get("value", 0)), float(data.get("max", 0)))
    elif event == "execution_success":
        return Outcome(True)
    elif event == "execution_error":
        return Outcome(False, execution_error_message(data))
    elif event == "execution_interrupted":
        return Outcome(
            False, f"the job was interrupted at node {data.get('node_id')} ({data.get('node_type')})"
        )
    return None


def execution_error_message(data: Mapping[str, Any]) -> str:
    kind = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
    text = str(data.get("exception_message", "")).strip() or "no message"
    return f"node {data.get('node_id')} ({data.get('node_type')}) failed: " + (
        f"{kind}: {text}" if kind else text
    )


async def follow_websocket(
    client: ComfyClient,
    client_id: str,
    queue: Callable[[], str],
    reporter: Reporter,
    timeout: float,
    queued: list[str],
) -> Outcome | None:
    """Connect the websocket, then queue (so no event is missed; the prompt id is appended
    to ``queued``), then follow the job. Returns its outcome, or None when the socket closed
    before the end."""
    import aiohttp

    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(client.ws_url(client_id), max_msg_size=0) as ws,
    ):
        prompt_id = queue()
        queued.append(prompt_id)
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RunError(
                    f"the job did not finish within {timeout:g} s (it keeps running on the server)"
                )
            try:
                message = await ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                continue
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    payload = json.loads(message.data)
                except ValueError:
                    continue
                outcome = handle_event(
                    payload.get("type", ""), payload.get("data") or {}, prompt_id, reporter
                )
                if outcome is not None:
                    return outcome
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                reporter.line(
                    f"the websocket to {client.server} closed before the job ended (server stopped or "
                    "restarted, or a proxy cut it): following the job through /history and /queue"
                )
                return None


def queue_and_follow(
    client: ComfyClient,
    client_id: str,
    queue: Callable[[], str],
    reporter: Reporter,
    timeout: float,
) -> tuple[str, Outcome | None]:
    """Queue the prompt and follow it over the websocket when aiohttp can; otherwise just
    queue it (the caller then polls /history). Returns (prompt_id, outcome or None)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        reporter.line("aiohttp is not installed: no live progress, waiting for the result")
        return queue(), None
    queued: list[str] = []
    try:
        outcome = asyncio.run(follow_websocket(client, client_id, queue, reporter, timeout, queued))
    except RunError:
        raise
    except Exception as exc:  # the websocket failed (aiohttp errors, connection lost)
        if not queued:
            reporter.line(f"websocket unavailable ({exc}): no live progress, waiting for the result")
            return queue(), None
        reporter.line(f"websocket lost ({exc}): following the job through /history and /queue")
        return queued[0], None
    return queued[0], outcome


def wait_for_history(client: ComfyClient, prompt_id: str, timeout: float) -> Mapping[str, Any]:
    """Poll /history/<id> until the job's entry appears (the server adds it when it ends).

    Stops with a RunError when the server stops answering (it died during the run) or when
    the job is neither in the history nor in the queue twice in a row (the server lost it,
    e.g. it restarted), instead of waiting out ``timeout``.
    """
    deadline = time.monotonic() + timeout
    missing = 0
    while True:
        try:
            history = client.get_json(f"/history/{urllib.parse.quote(prompt_id)}")
            entry = history.get(prompt_id) if isinstance(history, Mapping) else None
            if isinstance(entry, Mapping):
                return entry
            missing = 0 if job_is_queued(client.get_json("/queue"), prompt_id) else missing + 1
        except RunError as exc:
            if exc.exit_code != EXIT_UNREACHABLE:
                raise
            raise RunError(
                f"ComfyUI at {client.server} stopped answering while the job ran, so its result is lost; "
                "see the server's console for why it stopped, then run the command again",
                EXIT_UNREACHABLE,
            ) from exc
        if missing >= 2:
            raise RunError(
                f"the job {prompt_id} is neither queued, running nor finished on {client.server} (was the "
                "server restarted?); run the command again"
            )
        if time.monotonic() > deadline:
            raise RunError(f"the job did not finish within {timeout:g} s (it keeps running on the server)")
        time.sleep(POLL_SECONDS)


def job_is_queued(queue: Any, prompt_id: str) -> bool:
    """Whether /queue lists ``prompt_id`` as running or pending (entries are [number, id, ...])."""
    if not isinstance(queue, Mapping):
        return True  # cannot tell: keep waiting
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
    return False


def history_outcome(entry: Mapping[str, Any]) -> Outcome:
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        for event, data in status.get("messages") or []:
            if event == "execution_error":
                return Outcome(False, execution_error_message(data))
            if event == "execution_interrupted":
                return Outcome(False, "the job was interrupted")
        return Outcome(False, "the job failed (see the ComfyUI log)")
    return Outcome(True)


# ---------------------------------------------------------------------------------------
# Collecting the saved files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedFile:
    node_id: str
    filename: str
    subfolder: str
    type: str


def saved_files(entry: Mapping[str, Any], types: Sequence[str] = ("output",)) -> list[SavedFile]:
    """Files the job's nodes report in their UI output (``images`` and any other list of
    {filename, subfolder, type} records), of the given types, in node order."""
    found: list[SavedFile] = []
    seen: set[tuple[str, str, str]] = set()
    for node_id, outputs in (entry.get("outputs") or {}).items():
        if not isinstance(outputs, Mapping):
            continue
        for records in outputs.values():
            if not isinstance(records, list):
                continue
            for record in records:
                if not isinstance(record, Mapping) or not isinstance(record.get("filename"), str):
                    continue
                kind = str(record.get("type", "output"))
                key = (record["filename"], str(record.get("subfolder", "")), kind)
                if kind in types and key not in seen:
                    seen.add(key)
                    found.append(SavedFile(str(node_id), key[0], key[1], kind))
    return found


def local_path(out_dir: Path, saved: SavedFile) -> Path:
    relative = PurePosixPath(saved.subfolder.replace("\\", "/")) / saved.filename
    if relative.is_absolute() or ".." in relative.parts:
        raise RunError(f"refusing to write {relative}: it leaves {out_dir}")
    return out_dir.joinpath(*relative.parts)


def download_saved(client: ComfyClient, files: Sequence[SavedFile], out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for saved in files:
        query = urllib.parse.urlencode(
            {"filename": saved.filename, "subfolder": saved.subfolder, "type": saved.type}
        )
        target = local_path(out_dir, saved)
        data = client.get_bytes(f"/view?{query}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerfusion_run.py",
        description="Queue a ComfyUI workflow on a running ComfyUI, follow it and download what its "
        "save nodes write. The workflow's saved seed is used unless --seed is given.",
    )
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"ComfyUI address (default {DEFAULT_SERVER})"
    )
    parser.add_argument(
        "--workflow", required=True, help="workflow JSON (UI format as ComfyUI saves it, or API)"
    )
    parser.add_argument("--fg", help="foreground prompt (LayerFusionTextEncode fg_text)")
    parser.add_argument("--bg", help="background prompt (LayerFusionTextEncode bg_text)")
    parser.add_argument("--blended", help="blended-image prompt (LayerFusionTextEncode blended_text)")
    parser.add_argument("--seed", type=int, help="noise seed (LayerFusionTripletSampler / KSampler)")
    parser.add_argument("--steps", type=int, help="sampling steps (LayerFusionTripletSampler / KSampler)")
    parser.add_argument("--width", type=int, help="image width (EmptyLatentImage)")
    parser.add_argument("--height", type=int, help="image height (EmptyLatentImage)")
    parser.add_argument("--batch-size", type=int, help="images per run (EmptyLatentImage)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set any input; NODE is a node id, title or class type; VALUE is parsed as JSON when it "
        "can be (repeatable), e.g. --set CheckpointLoaderSimple.ckpt_name=my_sdxl.safetensors",
    )
    parser.add_argument("--out", default="layerfusion_output", help="folder for the saved files")
    parser.add_argument("--include-previews", action="store_true", help="also download preview (temp) images")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    parser.add_argument("--print-api", action="store_true", help="print the API-format prompt and exit")
    parser.add_argument("--object-info", help="read /object_info from this JSON file instead of the server")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def named_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "fg": args.fg,
        "bg": args.bg,
        "blended": args.blended,
        "seed": args.seed,
        "steps": args.steps,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
    }


def queue_prompt(
    client: ComfyClient,
    prompt: Mapping[str, Any],
    client_id: str,
    object_info: Mapping[str, Any],
    reporter: Reporter,
    refused: list[str],
    workflow: Mapping[str, Any] | None = None,
) -> str:
    """POST the prompt; raise RunError when the server refuses all of it. Problems with parts
    of it (outputs that will not run) are printed and appended to ``refused``."""
    prompt_id = str(uuid.uuid4())
    payload: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
    if workflow is not None:  # as the browser does: saved PNGs then carry the graph
        payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
    status, answer = client.post_json("/prompt", payload)
    finder = FolderFinder(client, _load_model_files())
    if status != 200:
        lines = describe_refusal(answer if isinstance(answer, Mapping) else {}, object_info, finder)
        raise RunError("the server refused the workflow:\n  " + "\n  ".join(lines))
    if answer.get("node_errors"):
        for line in describe_refusal({"node_errors": answer["node_errors"]}, object_info, finder):
            print(f"error: part of the workflow will not run: {line}", file=sys.stderr, flush=True)
            refused.append(line)
    reporter.line(f"queued prompt {answer.get('prompt_id', prompt_id)} on {client.server}")
    return str(answer.get("prompt_id", prompt_id))


def run(args: argparse.Namespace) -> int:
    client = ComfyClient(args.server)
    workflow = load_workflow(args.workflow)
    try:
        sets = [parse_set_override(text) for text in args.sets]
    except WorkflowError as exc:
        raise RunError(str(exc), EXIT_USAGE) from exc
    object_info = load_json_file(args.object_info) if args.object_info else client.get_json("/object_info")
    prompt, notes = build_prompt(workflow, object_info, named_overrides(args), sets, client.server)
    reporter = Reporter(prompt, args.quiet)
    for note in notes:
        reporter.line(note)
    if args.print_api:
        json.dump(prompt, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK

    client_id = uuid.uuid4().hex
    started = time.monotonic()

    refused: list[str] = []

    def queue() -> str:
        ui_workflow = workflow if is_ui_workflow(workflow) else None
        return queue_prompt(client, prompt, client_id, object_info, reporter, refused, ui_workflow)

    prompt_id, outcome = queue_and_follow(client, client_id, queue, reporter, args.timeout)
    if outcome is not None and not outcome.ok:
        raise RunError(outcome.message)
    remaining = max(args.timeout - (time.monotonic() - started), 0.0)
    entry = wait_for_history(client, prompt_id, remaining + (HISTORY_GRACE_SECONDS if outcome else 0.0))
    outcome = history_outcome(entry)
    if not outcome.ok:
        raise RunError(outcome.message)

    types = ("output", "temp") if args.include_previews else ("output",)
    files = saved_files(entry, types)
    if not files:
        why = " (part of it was refused, see above)" if refused else " (does the workflow have a save node?)"
        raise RunError(f"the job finished but no node saved a file{why}")
    out_dir = Path(args.out)
    for path in download_saved(client, files, out_dir):
        print(os.fspath(path), flush=True)
    reporter.line(f"done in {time.monotonic() - started:.1f} s: {len(files)} file(s) in {out_dir}")
    if refused:
        raise RunError(f"{len(refused)} problem(s) kept part of the workflow from running (see above)")
    return EXIT_OK


def load_json_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}", EXIT_USAGE) from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: stopped (the job may still run on the server)", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError as exc:
        print(f"error: the server did not answer in time ({exc})", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # anything unforeseen: still one line, never a traceback
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
