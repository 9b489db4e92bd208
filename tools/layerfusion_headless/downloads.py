"""The files a finished job's save nodes report, downloaded into the output folder."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .client import ComfyClient
from .errors import RunError


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
