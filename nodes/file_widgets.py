"""The loaders' file widgets: the layer_model file lists (known files not on disk marked),
their queue-time check, and the auto_download switch."""

from __future__ import annotations

import os

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.model_folders import (
    layer_model_dir,
    layer_model_files,
    layer_model_path,
)
from ..layerfusion_core.files.known import BY_NAME, FileKind, mark_absent, missing_file_message, unmark


def layer_file_choices(*kinds: FileKind) -> list[str]:
    """Files present in layer_model, then the known files of ``kinds`` not on disk, marked
    "(not downloaded)" (they run only with auto_download; see ``check_layer_choice``)."""
    present = layer_model_files()
    known = [f.name for f in BY_NAME.values() if f.kind in kinds]
    return present + [mark_absent(name) for name in known if name not in present]


def default_choice(choices: list[str], name: str) -> str:
    """``name`` as it appears in ``choices`` (marked when absent)."""
    return name if name in choices else mark_absent(name)


def check_layer_choice(input_name: str, name: str, auto_download: bool = False) -> bool | str:
    """Queue-time check of a loader's file input (its ``validate_inputs``): True for a file
    on disk, or a known file with auto_download on; else the reason, so a wrong pick is
    refused before the run starts. Replaces ComfyUI's list check for this input, which
    would refuse saved workflows naming a file by its plain name."""
    file = unmark(name)
    path = layer_model_path(file)
    if path is not None and os.path.isfile(path):
        return True
    known = BY_NAME.get(file)
    if auto_download and known is not None and known.kind is not FileKind.UNSUPPORTED:
        return True
    return f"{input_name}: {missing_file_message(file, layer_model_dir())}"


def auto_download_input() -> io.Boolean.Input:
    """The loaders' optional ``auto_download`` widget."""
    return io.Boolean.Input(
        "auto_download",
        default=False,
        optional=True,
        tooltip="Download the file from Hugging Face into models/layer_model/ when it is missing "
        "(SHA-256 checked against the hub's metadata).",
    )
