"""Saving the layers of each image (a triplet, or a bundle's K + 2 layers) into ComfyUI's
output folder: SaveImage's file naming, counter and PNG metadata (the prompt and workflow,
or none under --disable-metadata), each image's files written whole or not at all, never
over an existing file. The one place that uses ComfyUI's save helpers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ..files.writing import check_name_length, prefix_file_name, write_new_files
from ..layers.bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY, LayerBundle
from ..layers.psd import psd_writer

COMPRESS_LEVEL = 4  # SaveImage's
MAX_COUNTER_TRIES = 100_000
PSD_SUFFIX = "_layers.psd"


def pick(t: torch.Tensor, index: int) -> torch.Tensor:
    """Row ``index`` of a batch, or its only row (a batch of 1 serves every triplet)."""
    return t[index if t.shape[0] > 1 else 0]


@dataclass(frozen=True)
class LayerFiles:
    """What a save writes per image (file suffixes without the leading "_" and ".png")."""

    shown: dict[str, torch.Tensor]  # suffix -> IMAGE batch: PNGs shown in the UI (the layers)
    others: dict[str, torch.Tensor] = field(default_factory=dict)  # suffix -> MASK/IMAGE: other PNGs
    psd: tuple[tuple[str, str, bool], ...] = ()  # (PSD layer name, shown suffix, visible), bottom to top

    @classmethod
    def triplet(
        cls,
        foreground: torch.Tensor,
        background: torch.Tensor,
        blended: torch.Tensor,
        masks: dict[str, torch.Tensor],
        save_psd: bool,
    ) -> LayerFiles:
        """The triplet's files: _fg, _bg, _blended, the masks; its PSD: "background", "foreground"
        (its alpha as the layer's transparency) and "blended" (hidden), bottom to top."""
        psd = (("background", "bg", True), ("foreground", "fg", True), ("blended", "blended", False))
        shown = {"fg": foreground, "bg": background, "blended": blended}
        return cls(shown, dict(masks), psd if save_psd else ())

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every file name suffix an image's save writes (after ``<prefix>_<counter>``)."""
        pngs = tuple(f"_{suffix}.png" for suffix in (*self.shown, *self.others))
        return (*pngs, PSD_SUFFIX) if self.psd else pngs


def save_layers(
    node_cls: type, count: int, layer_files: LayerFiles, filename_prefix: str
) -> tuple[list, list]:
    """Write the files of ``count`` images (one counter per image); return the UI entries
    (``ui.SavedResult``) of the shown PNGs and those of the other files (masks, PSD)."""
    import folder_paths
    from comfy_api.latest import io, ui

    to_pil = ui.ImageSaveHelper._convert_tensor_to_pil
    # SaveImage's own metadata: the prompt and every extra_pnginfo entry (the workflow), or
    # nothing under --disable-metadata.
    metadata = ui.ImageSaveHelper._create_png_metadata(node_cls)
    first = next(iter(layer_files.shown.values()))
    file_name = prefix_file_name(filename_prefix)
    if "%" not in file_name:  # no token to replace: refuse before ComfyUI makes the subfolder
        check_name_length("filename_prefix", file_name, "_00001", layer_files.suffixes)
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), first.shape[2], first.shape[1]
    )
    # Before any file: the longest name this save writes (last image, last counter) must fit.
    check_name_length(
        "filename_prefix",
        filename.replace("%batch_num%", str(count - 1)),
        f"_{counter + count - 1:05}",
        layer_files.suffixes,
    )
    results, others = [], []
    for index in range(count):
        name = filename.replace("%batch_num%", str(index))
        layers = {key: to_pil(pick(t, index)) for key, t in layer_files.shown.items()}
        images = dict(layers)
        images.update({key: to_pil(pick(t, index)) for key, t in layer_files.others.items()})
        files = {
            f"_{suffix}.png": lambda tmp, image=image: image.save(
                tmp, format="PNG", pnginfo=metadata, compress_level=COMPRESS_LEVEL
            )
            for suffix, image in images.items()
        }
        if layer_files.psd:
            files[PSD_SUFFIX] = psd_writer([(n, layers[key], v) for n, key, v in layer_files.psd])
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


def fg_suffix(index: int, name: str) -> str:
    """File suffix of FG layer ``index``: ``fg<index>_<name>``, the name cut to letters,
    digits, "-" and "_" (other runs become one "_") and 40 characters; ``fg<index>`` when
    nothing is left. The index keeps suffixes unique and in layer order."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40]
    return f"fg{index}_{slug}" if slug else f"fg{index}"


def bundle_files(bundle: LayerBundle, save_psd: bool) -> LayerFiles:
    """A decoded bundle's files: per FG layer its RGBA PNG and its soft and hard masks, BG,
    BLENDED and, after a re-harmonise, the effects layer; its PSD: BG, the effects, the FG
    layers back to front, BLENDED hidden on top."""
    suffixes = {key: fg_suffix(index, bundle.names[key]) for index, key in enumerate(bundle.order)}
    shown = {suffixes[key]: bundle.images[key] for key in bundle.order}
    shown.update({BG_KEY: bundle.images[BG_KEY], BLENDED_KEY: bundle.images[BLENDED_KEY]})
    effects = ()
    if EFFECTS_KEY in bundle.images:
        shown[EFFECTS_KEY] = bundle.images[EFFECTS_KEY]
        effects = (("effects", EFFECTS_KEY, True),)
    others = {}
    for key in bundle.order:
        soft, hard = bundle.masks[key]
        others.update({f"{suffixes[key]}_soft_mask": soft, f"{suffixes[key]}_hard_mask": hard})
    psd = (
        ("background", BG_KEY, True),
        *effects,
        *((bundle.names[key], suffixes[key], True) for key in bundle.order),
        ("blended", BLENDED_KEY, False),
    )
    return LayerFiles(shown, others, psd if save_psd else ())
