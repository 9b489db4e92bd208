"""Writing layer files: a layered PSD (psd-tools, optional) and atomic writes.

No ComfyUI here: Pillow and, only when a PSD is asked for, psd-tools (imported lazily so the
pack works without it). Every file goes to a temporary name in its final folder first and
is renamed into place, so an interrupted or failed save never leaves a half-written file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image

from ..files.writing import Writer, atomic_write

__all__ = [
    "atomic_write",
    "check_psd_canvas",
    "psd_layer_names",
    "psd_writer",
]

# 1.14.3 is the first release checked to write these files correctly without psd-tools'
# optional compositing extras: 1.10.x-1.11.x need scikit-image to save, 1.12.0 wrote a
# merged image shorter than its header says, 1.13.x-1.14.0 a wrong merged preview.
PSD_TOOLS_MIN_VERSION = (1, 14, 3)
PSD_TOOLS_REQUIREMENT = "psd-tools>=1.14.3,<2"
_INSTALL = f'pip install "{PSD_TOOLS_REQUIREMENT}"'

# Bottom to top. The blended image is stored hidden on top: one click compares it with the
# editable foreground-over-background stack below it.

# The PSD format holds at most 30,000 px per side (larger needs PSB, which is not written).
PSD_MAX_SIDE = 30_000
# A layer name: the legacy Pascal string holds at most 255 Mac Roman bytes, and Photoshop
# keeps at most 255 characters (UTF-16 code units) of the Unicode name it reads first.
PSD_MAX_NAME = 255


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


def check_psd_canvas(size: tuple[int, int]) -> tuple[int, int]:
    """Return ``size`` (width, height); ValueError naming save_psd when a side is over the
    PSD format's 30,000 px."""
    width, height = size
    if max(width, height) > PSD_MAX_SIDE:
        raise ValueError(
            f"save_psd: the canvas is {width}x{height} px, over the PSD format's limit of "
            f"{PSD_MAX_SIDE:,} px per side (larger canvases need the PSB format, which is not "
            "written); turn save_psd off to save the PNGs alone, or make the images smaller"
        )
    return size


def psd_layer_names(name: str) -> tuple[str, str]:
    """(legacy, unicode) names of a PSD layer called ``name``: the Unicode name (what
    Photoshop and psd-tools read) cut to 255 UTF-16 code units, never inside a surrogate
    pair (a lone surrogate, which JSON can carry, becomes U+FFFD); the legacy Pascal name is
    the same text in Mac Roman, each character Mac Roman lacks written as "?", at most 255
    bytes."""
    text = name.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")
    units = text.encode("utf-16-be")[: 2 * PSD_MAX_NAME]
    if len(units) >= 2 and 0xD8 <= units[-2] <= 0xDB:  # a high surrogate whose pair was cut off
        units = units[:-2]
    unicode_name = units.decode("utf-16-be")
    legacy = unicode_name.encode("mac_roman", errors="replace")[:PSD_MAX_NAME].decode("mac_roman")
    return legacy, unicode_name


def psd_writer(layers: Sequence[tuple[str, Image.Image, bool]]) -> Writer:
    """A writer of an 8-bit PSD with one pixel layer per ``(name, image, visible)``, bottom
    to top; an RGBA image's alpha is the layer's transparency, an RGB image is opaque.

    Any name is written (see ``psd_layer_names``): psd-tools itself writes only the legacy
    Mac Roman name, which fails on other characters and on more than 255 bytes.

    All images must have the same size (ValueError naming the first that differs), at most
    30,000 px per side (ValueError naming save_psd).
    """
    size = check_psd_canvas(check_same_size([(name, image.size) for name, image, _ in layers]))
    psd_image, pixel_layer = import_psd_tools()
    from psd_tools.constants import Tag

    # An "RGBA" document keeps each layer's alpha as its transparency channel; in an "RGB"
    # one psd-tools turns the alpha into a layer mask instead.
    psd = psd_image.new("RGBA", size)
    for name, image, visible in layers:
        legacy, unicode_name = psd_layer_names(name)
        layer = pixel_layer.frompil(image.convert("RGBA"), psd, legacy)  # appends on top
        # The Unicode name ('luni' block), which Photoshop and psd-tools read before the legacy one.
        layer.tagged_blocks.set_data(Tag.UNICODE_LAYER_NAME, unicode_name)
        layer.visible = visible

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fp:
            psd.save(fp)

    return write
