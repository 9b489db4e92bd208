"""Reading LayerDiffuse files from models/layer_model/ (downloading a missing one first, with
ComfyUI's progress bar and Cancel) into what the pack runs: FG weights, and the transparent
decoder in a ModelPatcher on ComfyUI's VAE devices (``vae_device``/``vae_offload_device``,
so --cpu-vae and --gpu-only apply), loaded by ComfyUI's memory management like a VAE."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..fg_weights import ForegroundWeights, parse_foreground_weights
from ..files.checks import safetensors_problem, weights_problem
from ..files.downloads import download_verified, hub_file_info
from ..files.known import (
    BY_NAME,
    DEFAULT_DECODER_FILE,
    FileKind,
    download_url,
    looks_like_sd15,
    missing_file_message,
    pinned_sha256,
    unmark,
    unsupported_reason,
)
from ..models.transparent_vae import TransparentDecoder
from ..sdxl import SDXL
from .model_folders import layer_model_dir, layer_model_path

log = logging.getLogger(__name__)

_MB = 1_000_000
# The dtypes ComfyUI may pick for the decoder, best first, through vae_dtype() (which also
# honours --fp16-vae/--bf16-vae/--fp32-vae). fp16 is allowed, unlike for SDXL's own VAE:
# every block normalises its input (GroupNorm), and LayerDiffuse itself runs this decoder
# in fp16. On CPU vae_dtype gives float32.
WORKING_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def load_foreground_weights(name: str, auto_download: bool = False) -> ForegroundWeights:
    """Parse and validate a FG weights file against SDXL's table (errors name the file)."""
    name = unmark(name)
    reason = unsupported_reason(name)
    if reason:
        raise ValueError(f"weights_name: {name} cannot be used as LayerFusion FG weights: {reason}")
    state_dict = read_layer_file("weights_name", name, auto_download)
    try:
        return parse_foreground_weights(state_dict, SDXL, source=name)
    except ValueError as err:
        raise ValueError(f"weights_name: {name} is not a LayerDiffuse SDXL attention file: {err}") from err


@dataclass(frozen=True)
class LoadedDecoder:
    """What flows through a LAYERFUSION_DECODER socket."""

    patcher: Any
    """comfy.model_patcher.ModelPatcher whose ``.model`` is a TransparentDecoder."""
    name: str
    """The file it came from."""
    dtype: torch.dtype


def load_transparent_decoder(name: str, auto_download: bool = False) -> LoadedDecoder:
    """Read ``models/layer_model/<name>`` strictly into a TransparentDecoder in a ModelPatcher.

    FileNotFoundError says where to download a missing file; ValueError names the file and
    the missing, unexpected or mis-shaped keys.
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    name = unmark(name)
    if looks_like_sd15(name):
        log.warning(
            "%s looks like LayerDiffuse's SD1.5 transparent decoder; LayerFusion's FG latents come "
            "from SDXL, for which %s is the matching decoder",
            name,
            DEFAULT_DECODER_FILE,
        )
    state_dict = read_layer_file("decoder_name", name, auto_download)
    try:
        decoder = TransparentDecoder.from_state_dict(state_dict)
    except ValueError as err:
        raise ValueError(f"decoder_name: {name} is not a LayerDiffuse transparent decoder: {err}") from err

    load_device = mm.vae_device()
    dtype = mm.vae_dtype(load_device, list(WORKING_DTYPES))
    decoder = decoder.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(
        decoder, load_device=load_device, offload_device=mm.vae_offload_device()
    )
    log.info("transparent decoder %s: load device %s, dtype %s", name, load_device, dtype)
    return LoadedDecoder(patcher, name, dtype)
