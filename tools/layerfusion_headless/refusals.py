"""Explaining a refused prompt: one line per problem, saying where a missing model file goes
(and where to download a known one), and what to install for unknown node types."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .client import ComfyClient
from .errors import RunError, UnknownNodeTypeError
from .widgets import MEDIA_UPLOAD_OPTIONS, node_inputs

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def unknown_type_message(exc: UnknownNodeTypeError, server: str) -> str:
    if any(kind.startswith(PACK_PREFIX) for kind in exc.class_types):
        fix = (
            "ComfyUI-LayerFusion is not installed or failed to load on that server: put it in "
            "ComfyUI/custom_nodes/, restart ComfyUI and check its startup log for import errors"
        )
    else:
        fix = "install the custom node pack that provides it (e.g. with ComfyUI Manager) and restart ComfyUI"
    return f"{exc} (server {server}); {fix}"


def _load_model_files() -> ModuleType | None:
    """layerfusion_core/files/known.py (pure Python) for download hints, or None."""
    path = REPO_ROOT / "layerfusion_core" / "files" / "known.py"
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
    for spec in node_inputs(info):
        if spec.name == input_name:
            return list(spec.choices or spec.options.get("options") or []), spec.options
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
        if any(spec.get(k) for k in MEDIA_UPLOAD_OPTIONS):
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
