"""Which model families a run accepts, and the table each gets: the one place that decides.
The host adapter describes the model by the names of its model class and their bases (so a
subclass of a supported family is accepted) and its UNet config; nothing here imports ComfyUI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sdxl import UNetLayout, layout_from_unet_config

SUPPORTED_FAMILIES = ("SDXL",)
"""ComfyUI model classes (comfy.model_base) whose UNets have a table here."""


def layout_for_model(class_names: Sequence[str], unet_config: dict[str, Any], config_name: str) -> UNetLayout:
    """The transformer table of a model whose class (and its bases, most derived first) are
    ``class_names``; ValueError naming ``model`` and the family for any other."""
    if "SDXL" in class_names:
        return layout_from_unet_config(unet_config, name=config_name)
    got = class_names[0] if class_names else "nothing"
    raise ValueError(
        f"model: LayerFusion needs an SDXL model (the LayerDiffuse FG weights are SDXL's), got {got}"
    )
