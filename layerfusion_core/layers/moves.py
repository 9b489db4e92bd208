"""How a re-harmonise is told where the layers go: per-layer moves (dx, dy, scale, flips, as
the re-harmonise node's widgets give them) or a LAYERS document in ComfyUI core's format,
whose items, matched by name, give each layer's x, y, w, h and flips (core's Add Layer and
layer editor write them). Both become one ``Placement`` per layer and image. A re-harmonise
moves the layers' own pixels: a field it cannot honour (a mask, an opacity other than 1, a
blend mode other than normal, a rotation, a hidden layer, a z order other than the chain's)
is refused by item and field, never ignored."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..formats import ALPHA
from .bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY, LayerBundle
from .placement import Placement, check_on_canvas, placement_from_move, scale_of

OUR_ITEMS = frozenset({"bg", "blended", "effects", BG_KEY, BLENDED_KEY, EFFECTS_KEY})
"""Names of the non-FG items of our own LAYERS documents: skipped when matching layers."""

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
    layer is scaled by w over that width) at (x, y). ValueError naming ``name`` and the field
    for what a re-harmonise cannot do (``check_item_fields``) or a size that is not positive."""
    check_item_fields(item, name)
    width, height = canvas
    image = item.get("image")
    native_w, native_h = (
        (int(image.shape[2]), int(image.shape[1])) if isinstance(image, torch.Tensor) else canvas
    )
    sizes = []
    for key, native, full in (("w", native_w, width), ("h", native_h, height)):
        value = item.get(key) or 0
        if not _is_number(value) or value < 0:
            raise ValueError(f"{name}: {key} must be a size in pixels (0 = the image's own), got {value!r}")
        sizes.append(full if value == 0 else max(1, round(full * value / native)))
    position = []
    for key in ("x", "y"):
        value = item.get(key, 0) or 0
        if not _is_number(value):
            raise ValueError(f"{name}: {key} must be a number of pixels, got {value!r}")
        position.append(int(value))  # as core's compositor reads it
    for key, size, full in (("w", sizes[0], width), ("h", sizes[1], height)):
        if size > MAX_SCALE * full:
            raise ValueError(
                f"{name}: {key} {item.get(key)!r} scales the layer beyond {MAX_SCALE}x the canvas"
            )
    flips = [_flag(item, key, name) for key in ("flip_h", "flip_v")]
    return Placement(position[0], position[1], sizes[0], sizes[1], *flips)


def check_item_fields(item: dict[str, Any], name: str) -> None:
    """ValueError naming ``name`` and the field when a LAYERS item asks for what a re-harmonise
    cannot give: the layer's own pixels are moved, so a mask, an opacity, a blend mode, a
    rotation or hiding the layer would be silently lost."""
    rotation = item.get("rotation") or 0.0
    if not _is_number(rotation) or rotation != 0:
        raise ValueError(
            f"{name}: rotation {rotation!r}: a re-harmonise moves, scales and flips layers but does not "
            "rotate them; set the item's rotation to 0"
        )
    if item.get("mask") is not None:
        raise ValueError(
            f"{name}: mask: a re-harmonise moves the layer's own alpha and cannot apply a mask to it; "
            "remove the item's mask (cut the layer before the run instead)"
        )
    opacity = item.get("opacity", 1.0)
    if opacity is not None and (not _is_number(opacity) or opacity != 1):
        raise ValueError(
            f"{name}: opacity {opacity!r}: a re-harmonise harmonises the layer as drawn; set opacity to 1 "
            "(fade it in an editor afterwards)"
        )
    blend_mode = item.get("blend_mode", "normal")
    if blend_mode not in (None, "normal"):
        raise ValueError(
            f"{name}: blend_mode {blend_mode!r}: a re-harmonise composites layers normally; set blend_mode "
            "to 'normal'"
        )
    if _flag(item, "visible", name, default=True) is False:
        raise ValueError(
            f"{name}: visible is false: a re-harmonise cannot leave a layer out; show it, or drop it from "
            "the chain and run again"
        )


def document_canvas(document: dict[str, Any], name: str) -> tuple[int, int] | None:
    """A LAYERS document's canvas as (width, height), None when it has none; ValueError naming
    ``name`` when it is not two positive whole numbers."""
    canvas = document.get("canvas")
    if canvas is None:
        return None
    if (
        not isinstance(canvas, (tuple, list))
        or len(canvas) != 2
        or not all(_is_number(v) and v == int(v) and v > 0 for v in canvas)
    ):
        raise ValueError(f"{name}: canvas must be (width, height) in whole pixels, got {canvas!r}")
    return int(canvas[0]), int(canvas[1])


def document_placements(document: Any, bundle: LayerBundle, name: str = "layers") -> dict[str, Placement]:
    """Placements by layer key from a LAYERS document's items, matched by layer name (our own
    bg / blended / effects items are skipped). ValueError naming ``name`` for a malformed
    document, another canvas, an item naming no layer of the bundle, a layer named twice, a
    field a re-harmonise cannot honour, or layers stacked in another order than the chain's."""
    if not isinstance(document, dict) or not isinstance(document.get("layers"), list):
        raise ValueError(
            f"{name}: expected a LAYERS document (a dict with a list of layers), got {type(document).__name__}"
        )
    canvas = tuple(int(v) for v in bundle.images[BG_KEY].shape[2:0:-1])
    given = document_canvas(document, name)
    if given is not None and given != canvas:
        raise ValueError(f"{name}: the document's canvas is {given}, the bundle's images are {canvas}")
    keys = {bundle.names[key]: key for key in bundle.order}
    out: dict[str, Placement] = {}
    stacking: list[tuple[Any, int, str]] = []
    for number, item in enumerate(document["layers"], 1):
        if not isinstance(item, dict):
            raise ValueError(f"{name}: item {number} is not a layer (a dict), got {type(item).__name__}")
        item_name = item.get("name")
        if item_name is not None and not isinstance(item_name, str):
            raise ValueError(
                f"{name}: item {number}: name must be text, got {type(item_name).__name__} {item_name!r}"
            )
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
        z_index = item.get("z_index", 0)
        if not _is_number(z_index):
            raise ValueError(f"{name}: item {item_name!r}: z_index must be a number, got {z_index!r}")
        stacking.append((z_index, number, key))
    _check_stacking(stacking, bundle, name)
    # An item where the layer already is moves nothing (Decode Layers' own document names every
    # layer at the origin): it leaves the layer to the widgets.
    return {key: p for key, p in out.items() if not p.is_identity(*canvas)}


def _check_stacking(stacking: list[tuple[Any, int, str]], bundle: LayerBundle, name: str) -> None:
    """ValueError naming ``name`` when the items' z order (stable, as core sorts them) puts the
    bundle's layers in another order than the chain's (back to front)."""
    stacked = [key for _, _, key in sorted(stacking, key=lambda entry: entry[:2])]
    chain = [key for key in bundle.order if key in stacked]
    if stacked != chain:
        names = ", ".join(repr(bundle.names[key]) for key in chain)
        raise ValueError(
            f"{name}: z_index stacks the layers in another order than the chain's (back to front: "
            f"{names}); a re-harmonise keeps the chain's order: reorder the Layer Prompt chain and run again"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flag(item: dict[str, Any], key: str, name: str, default: bool = False) -> bool:
    """An item's boolean field (absent or None: ``default``); ValueError naming ``name`` and the
    field for anything but True/False (a string "false" would read as true)."""
    value = item.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {key} must be true or false, got {type(value).__name__} {value!r}")
    return value


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
        alphas = bundle.images[key][..., ALPHA]
        out[key] = []
        for n in range(bundle.num_images):
            placement = placement_from_move(alphas[n], move.dx, move.dy, move.scale, move.flip_h, move.flip_v)
            check_on_canvas(placement, alphas[n], f"fg{index}_dx/fg{index}_dy")
            out[key].append(placement)
    for key, placement in by_document.items():
        for n in range(bundle.num_images):
            check_on_canvas(
                placement, bundle.images[key][n, ..., ALPHA], f"layers: item {bundle.names[key]!r}"
            )
        out[key] = [placement] * bundle.num_images
    return out


def _moved_field(move: LayerMove) -> str:
    """The first widget of a move that is not at its default (for messages)."""
    default = LayerMove()
    return next(
        f for f in ("dx", "dy", "scale", "flip_h", "flip_v") if getattr(move, f) != getattr(default, f)
    )
