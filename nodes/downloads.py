"""Optional automatic download of missing LayerDiffuse files into models/layer_model/, with
ComfyUI's progress bar and SHA-256 verification (see layerfusion_core.downloads)."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..layerfusion_core.files.checks import safetensors_problem, weights_problem
from ..layerfusion_core.files.downloads import download_verified, hub_file_info
from ..layerfusion_core.files.known import (
    BY_NAME,
    FileKind,
    download_url,
    mark_absent,
    missing_file_message,
    pinned_sha256,
    unmark,
)
from .model_folders import layer_model_dir, layer_model_files, layer_model_path

log = logging.getLogger(__name__)

_MB = 1_000_000


def ensure_layer_model(name: str) -> str:
    """Path of the LayerDiffuse file ``name``: the one already in a layer_model folder, else
    a fresh download of the known file into ``layer_model_dir()``.

    The SHA-256 is read from the hub's LFS metadata at download time, else taken from the
    UNVERIFIED pinned table; without either only the length is checked. Raises ValueError
    for names this pack cannot download, and DownloadError (nothing left behind) when the
    download fails or does not verify. Cancelling the prompt stops the download.
    """
    existing = layer_model_path(name)
    if existing is not None and os.path.isfile(existing):
        return existing
    known = BY_NAME.get(name)
    if known is None:
        raise ValueError(
            f"{name} is not a LayerDiffuse file LayerFusion can download; known files: "
            f"{', '.join(f.name for f in BY_NAME.values() if f.kind is not FileKind.UNSUPPORTED)}"
        )
    if known.kind is FileKind.UNSUPPORTED:
        raise ValueError(f"{name} is not downloaded: {known.note}")

    import comfy.model_management
    import comfy.utils

    url = download_url(name)
    dest = os.path.join(layer_model_dir(), name)
    fallback_total = known.size_mb * _MB
    bar = comfy.utils.ProgressBar(fallback_total)

    def progress(done: int, total: int | None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total or max(fallback_total, done))

    log.info("downloading %s (about %d MB) from %s into %s", name, known.size_mb, url, dest)
    sha256, size = hub_file_info(url)
    download_verified(url, dest, fallback_total, sha256 or pinned_sha256(name), size, progress=progress)
    return dest


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


def find_layer_file(name: str, auto_download: bool) -> str | None:
    """Path of ``name`` in layer_model; downloaded first when missing and ``auto_download``."""
    name = unmark(name)
    path = layer_model_path(name)
    if (path is None or not os.path.isfile(path)) and auto_download:
        path = ensure_layer_model(name)
    return path if path is not None and os.path.isfile(path) else None


def read_layer_file(input_name: str, name: str, auto_download: bool = False) -> dict:
    """The tensors of the layer_model file ``name`` (downloaded first with ``auto_download``).

    Every failure is a FileNotFoundError or ValueError that names ``input_name`` and the
    file: missing, not a whole safetensors file (empty, truncated, pickled, corrupt), or
    holding tensors that are not finite floating-point weights.
    """
    import comfy.utils

    name = unmark(name)
    path = find_layer_file(name, auto_download)
    if path is None:
        raise FileNotFoundError(f"{input_name}: {missing_file_message(name, layer_model_dir())}")
    problem = safetensors_problem(path)
    if problem is None:
        try:
            state_dict = comfy.utils.load_torch_file(path, safe_load=True)
        except Exception as err:  # the safetensors reader's own errors name neither input nor file
            problem = f"it could not be read ({type(err).__name__}: {err})"
    if problem is not None:
        raise ValueError(f"{input_name}: {name} ({path}) is not a usable .safetensors file: {problem}")
    problem = weights_problem(state_dict)
    if problem is not None:
        raise ValueError(f"{input_name}: {name} ({path}) cannot be used: {problem}")
    return state_dict


def auto_download_input() -> io.Boolean.Input:
    """The loaders' optional ``auto_download`` widget."""
    return io.Boolean.Input(
        "auto_download",
        default=False,
        optional=True,
        tooltip="Download the file from Hugging Face into models/layer_model/ when it is missing "
        "(SHA-256 checked against the hub's metadata).",
    )
