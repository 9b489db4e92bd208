"""Saving the layers of each triplet into ComfyUI's output folder: SaveImage's file naming,
counter and PNG metadata (the prompt and workflow, or none under --disable-metadata), each
triplet's files written whole or not at all, never over an existing file. The one place
that uses ComfyUI's save helpers."""

from __future__ import annotations

import os

import torch

from ..files.writing import write_new_files
from ..layers.psd import layered_psd_writer

COMPRESS_LEVEL = 4  # SaveImage's
MAX_COUNTER_TRIES = 100_000


def pick(t: torch.Tensor, index: int) -> torch.Tensor:
    """Row ``index`` of a batch, or its only row (a batch of 1 serves every triplet)."""
    return t[index if t.shape[0] > 1 else 0]


def save_layers(
    node_cls: type,
    count: int,
    foreground: torch.Tensor,
    background: torch.Tensor,
    blended: torch.Tensor,
    masks: dict[str, torch.Tensor],
    filename_prefix: str,
    save_psd: bool,
) -> tuple[list, list]:
    """Write the files of ``count`` triplets; return the UI entries (``ui.SavedResult``) of
    the fg, bg, blended PNGs and those of the other files (masks, PSD)."""
    import folder_paths
    from comfy_api.latest import io, ui

    to_pil = ui.ImageSaveHelper._convert_tensor_to_pil
    # SaveImage's own metadata: the prompt and every extra_pnginfo entry (the workflow), or
    # nothing under --disable-metadata.
    metadata = ui.ImageSaveHelper._create_png_metadata(node_cls)
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), foreground.shape[2], foreground.shape[1]
    )
    results, others = [], []
    for index in range(count):
        name = filename.replace("%batch_num%", str(index))
        layers = {
            "fg": to_pil(pick(foreground, index)),
            "bg": to_pil(pick(background, index)),
            "blended": to_pil(pick(blended, index)),
        }
        images = dict(layers)
        images.update({key: to_pil(pick(mask, index)) for key, mask in masks.items()})
        files = {
            f"_{suffix}.png": lambda tmp, image=image: image.save(
                tmp, format="PNG", pnginfo=metadata, compress_level=COMPRESS_LEVEL
            )
            for suffix, image in images.items()
        }
        if save_psd:
            files["_layers.psd"] = layered_psd_writer(layers["bg"], layers["fg"], layers["blended"])
        counter, stem = write_triplet(folder, name, counter, files)
        for suffix in files:
            entry = ui.SavedResult(stem + suffix, subfolder, io.FolderType.output)
            (results if suffix.removeprefix("_").removesuffix(".png") in layers else others).append(entry)
        counter += 1
    return results, others


def write_triplet(folder: str, name: str, counter: int, files: dict) -> tuple[int, str]:
    """Write one triplet's ``files`` (name suffix -> writer) under the first counter from
    ``counter`` on whose files all are new: existing files are never overwritten (a prefix
    with %batch_num% makes ComfyUI's counter restart), and a failure leaves none of them."""
    for _ in range(MAX_COUNTER_TRIES):
        stem = f"{name}_{counter:05}"
        paths = {os.path.join(folder, stem + suffix): write for suffix, write in files.items()}
        if not any(os.path.lexists(path) for path in paths):
            try:
                write_new_files(paths)
                return counter, stem
            except FileExistsError:  # another save took the name meanwhile: next counter
                pass
        counter += 1
    raise RuntimeError(f"filename_prefix: no free file number for {name} after {MAX_COUNTER_TRIES} tries")
