"""The JSON/HTTP client for one ComfyUI server (urllib, blocking)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import EXIT_UNREACHABLE, EXIT_USAGE, RunError

DEFAULT_SERVER = "http://127.0.0.1:8188"
HTTP_TIMEOUT = 60.0


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
