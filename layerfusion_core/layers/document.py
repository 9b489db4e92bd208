"""A decoded layer bundle as ComfyUI core's LAYERS document.

The document (the ``LAYERS`` type of ComfyUI's core layer system, a plain dict):
``{"version": 1, "canvas": (width, height), "layers": [item, ...]}``, one item per layer of
ONE image of the batch (core expands an item's batch into one layer per frame, so a batch of
N images cannot share one document). Items, bottom to top by ``z_index``:

- ``bg`` (z 0), RGB;
- after a re-harmonise, ``effects`` (z 1), RGBA: the shadows and light it added;
- the FG layers back to front, RGBA with straight colour, named by their layer name;
- ``blended`` (on top), RGB, ``visible: False``: the harmonised image, hidden on top, to
  compare with the editable stack below (as in the layered PSD).

Pure torch: no ComfyUI here.
"""

from __future__ import annotations

from typing import Any

import torch

from .bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY, LayerBundle

DOCUMENT_VERSION = 1


BUNDLE_FIELDS = ("order", "names", "latents", "masks", "images", "with_images")


def check_bundle(value: Any, name: str, decoded: bool) -> LayerBundle:
    """``value`` as a layer bundle (by its fields, so a bundle made by another copy of the
    pack's modules passes too); ValueError naming input ``name`` otherwise, or when
    ``decoded`` and it has no images."""
    if not all(hasattr(value, f) for f in BUNDLE_FIELDS):
        what = "a decoded layer bundle (LayerFusion Decode Layers)" if decoded else "a layer bundle"
        raise ValueError(f"{name}: expected {what}, got {type(value).__name__}")
    if decoded and not value.images:
        raise ValueError(
            f"{name}: expected a decoded layer bundle (LayerFusion Decode Layers' decoded output), got a "
            "bundle without images"
        )
    return value


def fg_batch(bundle: LayerBundle, images: dict[str, torch.Tensor]) -> torch.Tensor:
    """The FG layers of every image as one batch, image-major: row ``n * K + k`` is layer
    ``k`` (back to front) of image ``n``. ``images``: key -> [N, H, W, C]."""
    stacked = torch.stack([images[key] for key in bundle.order], dim=1)  # [N, K, ...]
    return stacked.reshape(-1, *stacked.shape[2:])


def check_image_index(count: int, image_index: int) -> None:
    """ValueError naming ``document_image`` unless it is an image of a batch of ``count``."""
    if isinstance(image_index, bool) or not isinstance(image_index, int) or not 0 <= image_index < count:
        raise ValueError(
            f"document_image: expected an image of the batch, 0 .. {count - 1}, got {image_index!r}"
        )


def layers_document(bundle: LayerBundle, image_index: int = 0) -> dict[str, Any]:
    """The LAYERS document of image ``image_index`` of a decoded bundle (``bundle.images``)."""
    if not bundle.images:
        raise ValueError("layers: expected a decoded bundle (from LayerFusion Decode Layers), got no images")
    check_image_index(bundle.num_images, image_index)
    height, width = bundle.images[BG_KEY].shape[1:3]
    stack = [(BG_KEY, "bg", True)]
    if EFFECTS_KEY in bundle.images:
        stack.append((EFFECTS_KEY, "effects", True))
    stack += [(k, bundle.names[k], True) for k in bundle.order]
    stack.append((BLENDED_KEY, "blended", False))
    items = []
    for z_index, (key, name, visible) in enumerate(stack):
        image = bundle.images[key][image_index : image_index + 1]
        items.append(
            {
                "image": image,
                "type": "raster",
                "z_index": z_index,
                "name": name,
                "x": 0,
                "y": 0,
                "opacity": 1.0,
                "blend_mode": "normal",
                "visible": visible,
            }
        )
    return {"version": DOCUMENT_VERSION, "canvas": (int(width), int(height)), "layers": items}
