"""LayerFusionSaveLayers: every layer of each triplet into ComfyUI's output folder.

File names group a triplet under one counter, as SaveImage numbers its images:

    <prefix>_00001_fg.png         foreground, RGBA (straight colour, alpha intact)
    <prefix>_00001_bg.png         background
    <prefix>_00001_blended.png    blended image
    <prefix>_00001_soft_mask.png  soft mask, grayscale (only when connected)
    <prefix>_00001_hard_mask.png  hard mask, grayscale (only when connected)
    <prefix>_00001_layers.psd     layered PSD (only with save_psd)

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

from ..layerfusion_core.comfy_runtime.saving import save_layers
from ..layerfusion_core.layers.psd import check_same_size, import_psd_tools
from .schema import layerfusion_schema

OTHER_FILES_KEY = "layerfusion_files"  # UI-output key of the saved masks and PSDs


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
    for name, t in images.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or 0 in t.shape:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a non-empty IMAGE [B, H, W, C], got {shape}")
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
    given = {}
    for name, m in masks.items():
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.ndim not in (2, 3) or 0 in m.shape:
            shape = list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{name}: expected a MASK [B, H, W], got {shape}")
        given[name] = m if m.ndim == 3 else m.unsqueeze(0)
    batches = {name: t.shape[0] for name, t in {**images, **given}.items()}
    count = max(batches.values())
    wrong = {name: b for name, b in batches.items() if b not in (1, count)}
    if wrong:
        listed = ", ".join(f"{name} {b}" for name, b in batches.items())
        raise ValueError(f"batch: expected equal batch sizes (or 1 to reuse one image), got {listed}")
    return count, given


class LayerFusionSaveLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionSaveLayers",
            search_aliases=("save rgba", "save psd", "layered psd", "save transparent png"),
            display_name="LayerFusion Save Layers",
            description="Saves each triplet to the output folder: <prefix>_NNNNN_fg.png (RGBA), _bg.png, "
            "_blended.png, the masks when connected, and optionally a layered _layers.psd.",
            inputs=[
                io.Image.Input(
                    "foreground", tooltip="RGBA IMAGE: the rgba output of LayerFusionTransparentDecode."
                ),
                io.Image.Input("background", tooltip="The decoded BG layer."),
                io.Image.Input("blended", tooltip="The decoded BLENDED image."),
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
                    default="LayerFusion/layers",
                    tooltip="Output path prefix inside ComfyUI's output folder; may contain a subfolder and "
                    "%date% style tokens, as in Save Image.",
                ),
                io.Boolean.Input(
                    "save_psd",
                    default=False,
                    tooltip="Also write <prefix>_NNNNN_layers.psd: background, foreground with its "
                    'transparency, and blended as a hidden top layer. Needs pip install "psd-tools>=1.14.3,<2".',
                ),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        foreground,
        background,
        blended,
        filename_prefix: str,
        save_psd: bool,
        soft_mask=None,
        hard_mask=None,
    ) -> io.NodeOutput:
        count, masks = check_layer_inputs(
            foreground, background, blended, {"soft_mask": soft_mask, "hard_mask": hard_mask}
        )
        if save_psd:
            import_psd_tools()  # fail before writing anything when psd-tools is missing
            images = (("background", background), ("foreground", foreground), ("blended", blended))
            check_same_size([(name, (int(t.shape[2]), int(t.shape[1]))) for name, t in images])
        shown, others = save_layers(
            cls, count, foreground, background, blended, masks, filename_prefix, save_psd
        )
        # The masks and PSDs are reported too (under their own key, which the browser does not
        # display), so API clients such as the headless command fetch every saved file.
        return io.NodeOutput(ui=SavedLayerFiles(shown, others))
