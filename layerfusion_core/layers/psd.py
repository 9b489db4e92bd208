"""Writing layer files: a layered PSD per triplet (psd-tools, optional) and atomic writes.

No ComfyUI here: Pillow and, only when a PSD is asked for, psd-tools (imported lazily so the
pack works without it). Every file goes to a temporary name in its final folder first and
is renamed into place, so an interrupted or failed save never leaves a half-written file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image

from ..files.writing import Writer, atomic_write

__all__ = ["atomic_write", "layered_psd_writer", "psd_writer", "write_layered_psd"]

# 1.14.3 is the first release checked to write these files correctly without psd-tools'
# optional compositing extras: 1.10.x-1.11.x need scikit-image to save, 1.12.0 wrote a
# merged image shorter than its header says, 1.13.x-1.14.0 a wrong merged preview.
PSD_TOOLS_MIN_VERSION = (1, 14, 3)
PSD_TOOLS_REQUIREMENT = "psd-tools>=1.14.3,<2"
_INSTALL = f'pip install "{PSD_TOOLS_REQUIREMENT}"'

# Bottom to top. The blended image is stored hidden on top: one click compares it with the
# editable foreground-over-background stack below it.
PSD_LAYER_ORDER: tuple[str, ...] = ("background", "foreground", "blended")
PSD_HIDDEN_LAYERS: frozenset[str] = frozenset({"blended"})


class PsdToolsMissingError(ImportError):
    """psd-tools is missing or too old; the message says how to install it."""


def import_psd_tools() -> tuple[type, type]:
    """(PSDImage, PixelLayer) from psd-tools, or PsdToolsMissingError with the pip command."""
    try:
        import psd_tools
        from psd_tools import PSDImage
        from psd_tools.api.layers import PixelLayer
    except ImportError as exc:
        raise PsdToolsMissingError(
            "save_psd needs the optional package psd-tools, which is not installed. Install it into "
            f"the Python that runs ComfyUI with: {_INSTALL} (then restart ComfyUI), or turn save_psd off."
        ) from exc
    version = getattr(psd_tools, "__version__", "0")
    if parse_version(version) < PSD_TOOLS_MIN_VERSION:
        raise PsdToolsMissingError(
            f"save_psd needs {PSD_TOOLS_REQUIREMENT}, found psd-tools {version}, whose PSD files are "
            f"not written correctly. Upgrade it with: {_INSTALL} (then restart ComfyUI), or turn "
            "save_psd off."
        )
    return PSDImage, PixelLayer


def parse_version(version: str) -> tuple[int, int, int]:
    """Leading "major.minor.patch" of a version string as ints (missing parts are 0)."""
    parts = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if parts is None:
        return (0, 0, 0)
    major, minor, patch = (int(p) if p else 0 for p in parts.groups())
    return (major, minor, patch)


def check_same_size(sizes: Sequence[tuple[str, tuple[int, int]]]) -> tuple[int, int]:
    """Return the common (width, height) of named sizes; ValueError naming the first that differs."""
    if not sizes:
        raise ValueError("expected at least one image")
    first_name, first = sizes[0]
    for name, size in sizes[1:]:
        if tuple(size) != tuple(first):
            raise ValueError(
                f"{name}: expected {first[0]}x{first[1]} (the size of {first_name}), got "
                f"{size[0]}x{size[1]}; all layers of a PSD must have the same size"
            )
    return first


def layered_psd_writer(background: Image.Image, foreground: Image.Image, blended: Image.Image) -> Writer:
    """A writer of an 8-bit PSD with three pixel layers, bottom to top: "background",
    "foreground" (its alpha as layer transparency), "blended" (hidden).

    All three images must have the same size (ValueError naming the one that differs).
    RGB images become fully opaque layers.
    """
    images = {"background": background, "foreground": foreground, "blended": blended}
    return psd_writer([(name, images[name], name not in PSD_HIDDEN_LAYERS) for name in PSD_LAYER_ORDER])


def psd_writer(layers: Sequence[tuple[str, Image.Image, bool]]) -> Writer:
    """A writer of an 8-bit PSD with one pixel layer per ``(name, image, visible)``, bottom
    to top; an RGBA image's alpha is the layer's transparency, an RGB image is opaque.

    All images must have the same size (ValueError naming the first that differs).
    """
    check_same_size([(name, image.size) for name, image, _ in layers])
    size = layers[0][1].size
    psd_image, pixel_layer = import_psd_tools()

    # An "RGBA" document keeps each layer's alpha as its transparency channel; in an "RGB"
    # one psd-tools turns the alpha into a layer mask instead.
    psd = psd_image.new("RGBA", size)
    for name, image, visible in layers:
        layer = pixel_layer.frompil(image.convert("RGBA"), psd, name)  # appends on top
        layer.visible = visible

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fp:
            psd.save(fp)

    return write


def write_layered_psd(
    path: str, background: Image.Image, foreground: Image.Image, blended: Image.Image
) -> None:
    """``layered_psd_writer``'s PSD, written atomically to ``path``."""
    atomic_write(path, layered_psd_writer(background, foreground, blended))
