"""LayerFusionSaveLayers: every layer of each triplet (or of a decoded layer bundle) into
ComfyUI's output folder.

File names group a triplet under one counter, as SaveImage numbers its images:

    <prefix>_00001_fg.png         foreground, RGBA (straight colour, alpha intact)
    <prefix>_00001_bg.png         background
    <prefix>_00001_blended.png    blended image
    <prefix>_00001_soft_mask.png  soft mask, grayscale (only when connected)
    <prefix>_00001_hard_mask.png  hard mask, grayscale (only when connected)
    <prefix>_00001_layers.psd     layered PSD (only with save_psd)

With a decoded bundle (the ``bundle`` input, from LayerFusion Decode Layers) instead:

    <prefix>_00001_fg0_<name>.png            FG layer 0 (back-most), RGBA; fg1_<name>, ...
    <prefix>_00001_fg0_<name>_soft_mask.png  its soft mask; _hard_mask.png its hard mask
    <prefix>_00001_bg.png, _blended.png      background, blended image
    <prefix>_00001_layers.psd                BG, the FG layers back to front, BLENDED hidden

The next triplet (next image of the batch, or the next run) gets _00002, and so on. The
PNGs carry the prompt and workflow as SaveImage writes them, so dropping any of them on
ComfyUI reloads the graph. A triplet's files are written whole or not at all (temporary
names first, then moved into place; a failure removes the files of that triplet), and an
existing file is never overwritten: the counter moves on past any file in the way.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io, ui

from ..layerfusion_core.comfy_runtime.saving import LayerFiles, bundle_files, save_layers
from ..layerfusion_core.files.writing import check_filename_prefix
from ..layerfusion_core.layers.bundle import LayerBundle
from ..layerfusion_core.layers.document import check_bundle
from ..layerfusion_core.layers.psd import check_psd_canvas, check_same_size, import_psd_tools
from .schema import layerfusion_schema
from .types import LayerBundleType

OTHER_FILES_KEY = "layerfusion_files"  # UI-output key of the saved masks and PSDs
DEFAULT_PREFIX = "LayerFusion/layers"


class SavedLayerFiles(ui.SavedImages):
    """SaveImage's UI output for the shown PNGs, plus the other saved files under their own key."""

    def __init__(self, shown: list, others: list) -> None:
        super().__init__(shown)
        self.others = others

    def as_dict(self) -> dict:
        return {**super().as_dict(), OTHER_FILES_KEY: self.others}


def check_layer_inputs(
    foreground: Any, background: Any, blended: Any, masks: dict[str, Any]
) -> tuple[int, dict[str, torch.Tensor]]:
    """Validate the save node's tensors; return (triplet count, masks as [B, H, W])."""
    images = {"foreground": foreground, "background": background, "blended": blended}
    _check_images(images)
    given = _given_masks(masks)
    batches = {name: t.shape[0] for name, t in {**images, **given}.items()}
    count = max(batches.values())
    wrong = {name: b for name, b in batches.items() if b not in (1, count)}
    if wrong:
        listed = ", ".join(f"{name} {b}" for name, b in batches.items())
        raise ValueError(f"batch: expected equal batch sizes (or 1 to reuse one image), got {listed}")
    return count, given


def _check_images(images: dict[str, Any]) -> None:
    """ValueError naming the input unless foreground is RGBA and background, blended RGB(A)."""
    for name, t in images.items():
        if t is None:
            raise ValueError(
                f"{name}: expected an IMAGE, got nothing; connect foreground, background and blended, "
                "or a decoded bundle (LayerFusion Decode Layers) to bundle"
            )
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or 0 in t.shape:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a non-empty IMAGE [B, H, W, C], got {shape}")
    foreground = images["foreground"]
    if foreground.shape[-1] != 4:
        raise ValueError(
            f"foreground: expected an RGBA IMAGE with 4 channels, got {foreground.shape[-1]} "
            "(connect the rgba output of LayerFusionTransparentDecode)"
        )
    for name in ("background", "blended"):
        if images[name].shape[-1] not in (3, 4):
            raise ValueError(
                f"{name}: expected an RGB (or RGBA) IMAGE, got {images[name].shape[-1]} channels"
            )


def _given_masks(masks: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The connected masks as [B, H, W]; ValueError naming one of another shape."""
    given = {}
    for name, m in masks.items():
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.ndim not in (2, 3) or 0 in m.shape:
            shape = list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{name}: expected a MASK [B, H, W], got {shape}")
        given[name] = m if m.ndim == 3 else m.unsqueeze(0)
    return given


def check_bundle_inputs(bundle: Any, unused: dict[str, Any]) -> LayerBundle:
    """The decoded bundle; ValueError naming ``bundle``, or an image input given with it."""
    decoded = check_bundle(bundle, "bundle", decoded=True)
    given = [name for name, value in unused.items() if value is not None]
    if given:
        raise ValueError(
            f"{given[0]}: not used when bundle is connected (the bundle holds every layer and its masks); "
            "disconnect one of them"
        )
    return decoded


class LayerFusionSaveLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionSaveLayers",
            search_aliases=("save rgba", "save psd", "layered psd", "save transparent png"),
            display_name="LayerFusion Save Layers",
            description="Saves each triplet to the output folder: <prefix>_NNNNN_fg.png (RGBA), _bg.png, "
            "_blended.png, the masks when connected, and optionally a layered _layers.psd; or, with a "
            "decoded layer bundle, every FG layer (_fg0_<name>.png, ...) with its masks, BG and BLENDED.",
            inputs=[
                io.Image.Input(
                    "foreground",
                    optional=True,
                    tooltip="RGBA IMAGE: the rgba output of LayerFusionTransparentDecode (not with bundle).",
                ),
                io.Image.Input(
                    "background", optional=True, tooltip="The decoded BG layer (not with bundle)."
                ),
                io.Image.Input(
                    "blended", optional=True, tooltip="The decoded BLENDED image (not with bundle)."
                ),
                io.Mask.Input(
                    "soft_mask",
                    optional=True,
                    tooltip="Optional: saved as _soft_mask.png (grayscale, white = 1).",
                ),
                io.Mask.Input(
                    "hard_mask",
                    optional=True,
                    tooltip="Optional: saved as _hard_mask.png (grayscale, white = 1).",
                ),
                io.String.Input(
                    "filename_prefix",
                    default=DEFAULT_PREFIX,
                    tooltip="Output path prefix inside ComfyUI's output folder; may contain a subfolder and "
                    "%date% style tokens, as in Save Image. Not empty, no name starting with '.', no control "
                    'characters and none of < > : " | ? *.',
                ),
                io.Boolean.Input(
                    "save_psd",
                    default=False,
                    tooltip="Also write <prefix>_NNNNN_layers.psd: background, foreground with its "
                    'transparency, and blended as a hidden top layer. Needs pip install "psd-tools>=1.14.3,<2".',
                ),
                LayerBundleType.Input(
                    "bundle",
                    optional=True,
                    tooltip="A decoded layer bundle (LayerFusion Decode Layers): saves every FG layer as "
                    "_fg<k>_<name>.png with its masks, _bg.png, _blended.png; the PSD holds BG, the FG "
                    "layers back to front and blended hidden on top. Replaces the image and mask inputs.",
                ),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        filename_prefix: str,
        save_psd: bool,
        foreground=None,
        background=None,
        blended=None,
        soft_mask=None,
        hard_mask=None,
        bundle=None,
    ) -> io.NodeOutput:
        check_filename_prefix(filename_prefix, "filename_prefix", DEFAULT_PREFIX)
        masks = {"soft_mask": soft_mask, "hard_mask": hard_mask}
        if bundle is not None:
            unused = {"foreground": foreground, "background": background, "blended": blended, **masks}
            decoded = check_bundle_inputs(bundle, unused)
            count, files = decoded.num_images, bundle_files(decoded, save_psd)
        else:
            count, given = check_layer_inputs(foreground, background, blended, masks)
            files = LayerFiles.triplet(foreground, background, blended, given, save_psd)
        if files.psd:  # fail before writing anything: psd-tools missing, sizes a PSD cannot hold
            import_psd_tools()
            check_psd_canvas(
                check_same_size([(name, tuple(files.shown[key].shape[2:0:-1])) for name, key, _ in files.psd])
            )
        # Every file name's length is checked in save_layers, before any file is written.
        shown, others = save_layers(cls, count, files, filename_prefix)
        # The masks and PSDs are reported too (under their own key, which the browser does not
        # display), so API clients such as the headless command fetch every saved file.
        return io.NodeOutput(ui=SavedLayerFiles(shown, others))
