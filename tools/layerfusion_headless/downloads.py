"""The files a finished job's save nodes report, downloaded into the output folder.

Every name the server gives (file name and subfolder) is vetted first, for every operating
system: one that would leave the output folder anywhere (a backslash, a drive letter or other
colon, an absolute path, a ``..`` part) stops the download before anything is fetched. Files
are never written over a file already there: a job whose names are taken (an earlier run, a
server whose file counter restarted) gets the first free ``-2``, ``-3``, ... before each
extension, one number for all its files, written as a set by the pack's own
``layerfusion_core/files/writing.py`` (loaded by path: the core package is not imported).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import ModuleType
from typing import Any

from .client import ComfyClient
from .errors import RunError

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITING_MODULE = REPO_ROOT / "layerfusion_core" / "files" / "writing.py"
MAX_NAME_TRIES = 10_000


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


def name_problem(name: str, is_file: bool) -> str | None:
    """Why a server-given file name or subfolder could put a file outside the output folder on
    some operating system (or is no file name at all), or None. The same on every system: a
    Windows path is one harmless name on Linux, but the same answer escapes on Windows."""
    if "\x00" in name:
        return "a NUL character"
    if "\\" in name:
        return "a backslash (a folder separator on Windows)"
    if ":" in name:
        return "a colon (a drive letter on Windows)"
    path = PurePosixPath(name)
    if path.is_absolute() or PureWindowsPath(name).anchor:
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' part"
    if is_file and path.name in ("", "."):
        return "no file name"
    return None


def local_path(out_dir: Path, saved: SavedFile) -> Path:
    """Where ``saved`` goes under ``out_dir`` (before a taken name is numbered); RunError
    naming the server's name when it could leave ``out_dir``."""
    for field, name, is_file in (("subfolder", saved.subfolder, False), ("file name", saved.filename, True)):
        why = name_problem(name, is_file)
        if why is not None:
            shown = f"{saved.subfolder}/{saved.filename}" if saved.subfolder else saved.filename
            raise RunError(
                f"refusing the file the server reported as {shown!r} (node {saved.node_id}): its {field} "
                f"{name!r} has {why}, and such a name leaves {out_dir} on some system; nothing was "
                "downloaded"
            )
    relative = PurePosixPath(saved.subfolder) / saved.filename
    return out_dir.joinpath(*relative.parts)


def numbered(path: Path, number: int) -> Path:
    """``path`` itself for 1, else ``<stem>-<number><suffix>`` beside it."""
    return path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")


def distinct(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with a later repeat of a path numbered (-2, -3, ...) so that all differ."""
    result: list[Path] = []
    for path in paths:
        number = 1
        while numbered(path, number) in result:
            number += 1
        result.append(numbered(path, number))
    return result


@functools.cache
def core_writing() -> ModuleType:
    """layerfusion_core/files/writing.py (standard library only), loaded by its path."""
    try:
        spec = importlib.util.spec_from_file_location("_layerfusion_files_writing", WRITING_MODULE)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module at {WRITING_MODULE}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:
        raise RunError(
            f"cannot load {WRITING_MODULE} ({exc}): run the command from the ComfyUI-LayerFusion folder"
        ) from exc
    return module


def download_saved(
    client: ComfyClient,
    files: Sequence[SavedFile],
    out_dir: Path,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download ``files`` into ``out_dir``; return where each went. Nothing is written over a
    file that exists: when any of the job's names is taken, all of them get the first number
    (-2, -3, ...) under which none is, and ``note`` is told."""
    wanted = distinct([local_path(out_dir, saved) for saved in files])
    if not wanted:
        return []
    writing = core_writing()
    try:
        for folder in dict.fromkeys(path.parent for path in wanted):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot make the folder for the downloads in {out_dir}: {exc}") from exc

    def fetch(saved: SavedFile) -> Callable[[str], None]:
        def write(tmp: str) -> None:
            query = urllib.parse.urlencode(
                {"filename": saved.filename, "subfolder": saved.subfolder, "type": saved.type}
            )
            Path(tmp).write_bytes(client.get_bytes(f"/view?{query}"))

        return write

    for number in range(1, MAX_NAME_TRIES + 1):
        targets = [numbered(path, number) for path in wanted]
        try:
            writing.write_new_files(
                {str(path): fetch(saved) for path, saved in zip(targets, files, strict=True)}
            )
        except FileExistsError:  # taken (or taken meanwhile): the next number, for every file
            continue
        except OSError as exc:
            raise RunError(f"cannot write the downloads into {out_dir}: {exc}") from exc
        if number > 1 and note is not None:
            taken = next((p for p in wanted if p.exists() or p.is_symlink()), wanted[0])
            note(
                f"{taken} exists already (an earlier run?), so this job's files are saved with -{number} "
                f"before the extension, e.g. {targets[0]}"
            )
        return targets
    raise RunError(f"no free file names in {out_dir} after {MAX_NAME_TRIES} tries (e.g. {wanted[0]})")
