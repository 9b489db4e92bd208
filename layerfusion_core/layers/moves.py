"""How a re-harmonise is told where the layers go: per-layer moves (dx, dy, scale, flips, as
the re-harmonise node's widgets give them) or a LAYERS document in ComfyUI core's format,
whose items, matched by name, give each layer's x, y, w, h and flips (core's Add Layer and
layer editor write them). Both become one ``Placement`` per layer and image. Only an item's
geometry is read: its z_index, visibility, opacity and blend mode do not change the bundle
(the layer order is the chain's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY, LayerBundle
from .placement import Placement, check_on_canvas, placement_from_move, scale_of

OUR_ITEMS = frozenset({"bg", "blended", "effects", BG_KEY, BLENDED_KEY, EFFECTS_KEY})
"""Names of the non-FG items of our own LAYERS documents: skipped when matching layers."""

RGB = 3
MAX_SCALE = 8  # as the re-harmonise node's scale widgets


@dataclass(frozen=True)
class LayerMove:
    """Flip and scale about the layer's visible centre, then move by (dx, dy) pixels."""

    dx: int = 0
    dy: int = 0
    scale: float = 1.0
    flip_h: bool = False
    flip_v: bool = False

    @property
    def is_identity(self) -> bool:
        return self == LayerMove()


def item_placement(item: dict[str, Any], canvas: tuple[int, int], name: str) -> Placement:
    """A LAYERS item's geometry as the placement of a canvas-size layer (``canvas`` = (width,
    height)): its image flipped, shown at w x h (0 or absent: the image's own size; the
    layer is scaled by w over that width) at (x, y). ValueError naming ``name`` for a
    rotation (not supported) or a size that is not positive."""
    rotation = item.get("rotation") or 0.0
    if not isinstance(rotation, (int, float)) or not math.isfinite(rotation) or rotation != 0:
        raise ValueError(
            f"{name}: rotation {rotation!r}: a re-harmonise moves, scales and flips layers but does not "
            "rotate them; set the item's rotation to 0"
        )
    width, height = canvas
    image = item.get("image")
    native_w, native_h = (
        (int(image.shape[2]), int(image.shape[1])) if isinstance(image, torch.Tensor) else canvas
    )
    sizes = []
    for key, native, full in (("w", native_w, width), ("h", native_h, height)):
        value = item.get(key) or 0
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{name}: {key} must be a size in pixels (0 = the image's own), got {value!r}")
        sizes.append(full if value == 0 else max(1, round(full * value / native)))
    position = []
    for key in ("x", "y"):
        value = item.get(key, 0) or 0
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name}: {key} must be a number of pixels, got {value!r}")
        position.append(int(value))  # as core's compositor reads it
    for key, size, full in (("w", sizes[0], width), ("h", sizes[1], height)):
        if size > MAX_SCALE * full:
            raise ValueError(
                f"{name}: {key} {item.get(key)!r} scales the layer beyond {MAX_SCALE}x the canvas"
            )
    return Placement(
        position[0], position[1], sizes[0], sizes[1], bool(item.get("flip_h")), bool(item.get("flip_v"))
    )


def document_placements(document: Any, bundle: LayerBundle, name: str = "layers") -> dict[str, Placement]:
    """Placements by layer key from a LAYERS document's items, matched by layer name (our own
    bg / blended / effects items are skipped). ValueError naming ``name`` for a malformed
    document, another canvas, an item naming no layer of the bundle, or a layer named twice."""
    if not isinstance(document, dict) or not isinstance(document.get("layers"), list):
        raise ValueError(
            f"{name}: expected a LAYERS document (a dict with a list of layers), got {type(document).__name__}"
        )
    canvas = tuple(int(v) for v in bundle.images[BG_KEY].shape[2:0:-1])
    given = document.get("canvas")
    if given is not None and tuple(int(v) for v in given) != canvas:
        raise ValueError(f"{name}: the document's canvas is {tuple(given)}, the bundle's images are {canvas}")
    keys = {bundle.names[key]: key for key in bundle.order}
    out: dict[str, Placement] = {}
    for number, item in enumerate(document["layers"], 1):
        if not isinstance(item, dict):
            raise ValueError(f"{name}: item {number} is not a layer (a dict), got {type(item).__name__}")
        item_name = item.get("name")
        if item_name in OUR_ITEMS and item_name not in keys:
            continue
        if item_name not in keys:
            raise ValueError(
                f"{name}: item {number} is named {item_name!r}, which names no layer of the bundle "
                f"(its layers: {', '.join(map(repr, keys))})"
            )
        key = keys[item_name]
        if key in out:
            raise ValueError(f"{name}: layer {item_name!r} is placed by two items")
        out[key] = item_placement(item, canvas, f"{name}: item {item_name!r}")
    # An item where the layer already is moves nothing (Decode Layers' own document names every
    # layer at the origin): it leaves the layer to the widgets.
    return {key: p for key, p in out.items() if not p.is_identity(*canvas)}


def bundle_placements(
    bundle: LayerBundle, moves: dict[int, LayerMove], document: Any = None
) -> dict[str, list[Placement]]:
    """One placement per image for every layer that moves: layer k from ``moves[k]``
    (widgets ``fg<k>_*``), or from the document's item of its name. ValueError naming the
    input for a move of a layer the bundle lacks, a layer moved both ways, a scale that is
    not positive, or a layer moved fully off the canvas."""
    by_document = {} if document is None else document_placements(document, bundle)
    count = len(bundle.order)
    out: dict[str, list[Placement]] = {}
    for index, move in sorted(moves.items()):
        if move.is_identity:
            continue
        widget = f"fg{index}_{_moved_field(move)}"
        if index >= count:
            raise ValueError(
                f"{widget}: the bundle has {count} FG layer(s) (fg0 .. fg{count - 1}), no fg{index}"
            )
        key = bundle.order[index]
        if key in by_document:
            raise ValueError(
                f"{widget}: layer {bundle.names[key]!r} is also placed by the layers document; "
                f"reset fg{index}'s widgets or leave it out of the document"
            )
        scale_of(move.scale, f"fg{index}_scale")
        alphas = bundle.images[key][..., RGB]
        out[key] = []
        for n in range(bundle.num_images):
            placement = placement_from_move(alphas[n], move.dx, move.dy, move.scale, move.flip_h, move.flip_v)
            check_on_canvas(placement, alphas[n], f"fg{index}_dx/fg{index}_dy")
            out[key].append(placement)
    for key, placement in by_document.items():
        for n in range(bundle.num_images):
            check_on_canvas(placement, bundle.images[key][n, ..., RGB], f"layers: item {bundle.names[key]!r}")
        out[key] = [placement] * bundle.num_images
    return out


def _moved_field(move: LayerMove) -> str:
    """The first widget of a move that is not at its default (for messages)."""
    default = LayerMove()
    return next(
        f for f in ("dx", "dy", "scale", "flip_h", "flip_v") if getattr(move, f) != getattr(default, f)
    )
