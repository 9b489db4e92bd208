"""Stable import path of the SDXL table (ARCHITECTURE.md, Core API); the code is in
architectures/sdxl.py."""

from .architectures.sdxl import SDXL, layout_from_unet_config

__all__ = ["SDXL", "layout_from_unet_config"]
