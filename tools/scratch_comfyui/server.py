"""A real ComfyUI server for tests and tools: ``main.py --cpu`` on a free 127.0.0.1 port, with its
input/output/temp/user folders under a scratch folder and extra custom-node folders (this
repository, test-only node packs) made visible through ComfyUI's own
``--extra-model-paths-config`` (a ``custom_nodes`` entry), so nothing is written into the
ComfyUI checkout. Only the custom nodes named here load (``--whitelist-custom-nodes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from layerfusion_headless.client import ComfyClient
from layerfusion_headless.errors import RunError

START_TIMEOUT_S = 90.0


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base: Path
    output_dir: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def client(self) -> ComfyClient:
        """The headless command's JSON/HTTP client, for this server."""
        return ComfyClient(self.url, timeout=30)


def _answers(url: str) -> bool:
    try:
        ComfyClient(url, timeout=5).get_json("/system_stats")
    except RunError:
        return False
    return True


def _yaml_paths(entries: Mapping[str, list[Path]]) -> str:
    # JSON is valid YAML; ComfyUI reads one path per line of each value.
    section = {key: "\n".join(str(p) for p in paths) for key, paths in entries.items()}
    return json.dumps({"layerfusion_tests": section}, indent=2)


@contextlib.contextmanager
def comfy_server(
    root: Path,
    base: Path,
    custom_nodes: Mapping[str, Path] | None = None,
    model_folders: Mapping[str, list[Path]] | None = None,
    extra_args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[ComfyServer]:
    """Start ComfyUI from ``root`` with scratch folders under ``base``; stop it on exit.

    ``custom_nodes`` maps a pack name (its module and /extensions/ name) to the folder that
    holds it; each is symlinked into ``base/custom_nodes``. ``model_folders`` adds model
    search paths (e.g. ``{"layer_model": [...]}``)."""
    custom_nodes = dict(custom_nodes or {})
    model_folders = dict(model_folders or {})
    folders = {name: base / name for name in ("input", "output", "temp", "user", "custom_nodes")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name, path in custom_nodes.items():
        link = folders["custom_nodes"] / name
        if not link.exists():
            os.symlink(Path(path).resolve(), link, target_is_directory=True)
    config = base / "extra_model_paths.yaml"
    config.write_text(_yaml_paths({"custom_nodes": [folders["custom_nodes"]], **model_folders}))
    port = free_port()
    log = base / "server.log"
    command = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--input-directory",
        str(folders["input"]),
        "--output-directory",
        str(folders["output"]),
        "--temp-directory",
        str(folders["temp"]),
        "--user-directory",
        str(folders["user"]),
        "--database-url",
        "sqlite:///:memory:",
        "--extra-model-paths-config",
        str(config),
        "--disable-api-nodes",
        "--disable-all-custom-nodes",
        "--whitelist-custom-nodes",
        *(custom_nodes or ["none"]),
        *extra_args,
    ]
    server = ComfyServer(f"http://127.0.0.1:{port}", base, folders["output"], log)
    process_env = {**os.environ, **(env or {})}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, env=process_env
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise ServerStartError(
                        f"ComfyUI exited with {process.returncode} at startup:\n{server.log_tail()}"
                    )
                if _answers(server.url):
                    break
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"ComfyUI did not answer within {START_TIMEOUT_S:g} s:\n{server.log_tail()}"
                    )
                time.sleep(0.25)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
