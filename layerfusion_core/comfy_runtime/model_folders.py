"""Where LayerDiffuse files live: ComfyUI's models/layer_model/ (the folder the older
LayerDiffuse pack uses too, so users' files are found)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LAYER_MODEL_FOLDER = "layer_model"
EXTENSIONS = {".safetensors"}


def register_model_folders() -> None:
    """Register ``layer_model`` with a .safetensors filter, keeping paths users configured
    (extra_model_paths.yaml) and paths another pack registered."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, LAYER_MODEL_FOLDER)
    try:  # a stock ComfyUI has no models/layer_model/: create it so users know where files go
        os.makedirs(default, exist_ok=True)
    except OSError as exc:
        log.warning(
            "LayerFusion: could not create %s (%s); put LayerDiffuse files there yourself", default, exc
        )
    entry = folder_paths.folder_names_and_paths.get(LAYER_MODEL_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[LAYER_MODEL_FOLDER] = ([default], set(EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    if isinstance(extensions, set):
        extensions.update(EXTENSIONS)


def layer_model_files() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(LAYER_MODEL_FOLDER)


def layer_model_path(name: str) -> str | None:
    import folder_paths

    return folder_paths.get_full_path(LAYER_MODEL_FOLDER, name)


def layer_model_dir() -> str:
    import folder_paths

    return folder_paths.get_folder_paths(LAYER_MODEL_FOLDER)[0]
