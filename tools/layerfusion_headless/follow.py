"""Following a queued job: progress from the websocket on stderr, then (or, without aiohttp,
instead) ``/history`` and ``/queue`` until the job's entry appears."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .client import ComfyClient
from .errors import EXIT_UNREACHABLE, RunError

POLL_SECONDS = 0.5


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
