"""Command-line overrides on an API-format prompt: the named options (``--fg``, ``--seed``,
...) and ``--set NODE.INPUT=VALUE``.

The size options (``--width``, ``--height``) can also scale what is in pixels of the canvas
they resize (``scale_layout``): a Layer Prompt's box, a Re-harmonize's moves, an Alpha
Composite's offsets, by the new/old width and height, rounded to the input's step and kept in
its range and on the canvas. A node's canvas is the Empty Latent Image its sampler starts from,
found through the prompt's links."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowError
from .ui_to_api import wrap_value
from .widgets import InputSpec, node_inputs

# (option, node types, input) - an option sets that input on every node of those types.
OVERRIDE_TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "fg": (("LayerFusionTextEncode",), "fg_text"),
    "bg": (("LayerFusionTextEncode",), "bg_text"),
    "blended": (("LayerFusionTextEncode",), "blended_text"),
    "seed": (
        ("LayerFusionTripletSampler", "LayerFusionLayersSampler", "LayerFusionDecompose", "KSampler"),
        "seed",
    ),
    "steps": (
        (
            "LayerFusionTripletSampler",
            "LayerFusionLayersSampler",
            "LayerFusionDecompose",
            "KSampler",
            "KSamplerAdvanced",
        ),
        "steps",
    ),
    "width": (("EmptyLatentImage",), "width"),
    "height": (("EmptyLatentImage",), "height"),
    "batch_size": (("EmptyLatentImage",), "batch_size"),
}

SIZE_OPTIONS = ("width", "height")
CANVAS_NODES = OVERRIDE_TARGETS["width"][0]
"""Nodes whose width and height are the canvas the size options set."""
LATENT_INPUT = "latent_image"
"""A sampler's input: its canvas is the node this links to."""
BOX_NODES = ("LayerFusionLayerPrompt",)
"""Nodes with a box: x, y, width, height (width and height 0: no box)."""
MIN_BOX_SIDE = 8
"""A box side under one latent cell is refused by the sampler."""
# Inputs in pixels of the canvas that move something (input -> axis: "x" scales with the width).
OFFSET_INPUTS: dict[str, dict[str, str]] = {"LayerFusionAlphaComposite": {"x_offset": "x", "y_offset": "y"}}
MOVE_NODES = ("LayerFusionReharmonize",)
MOVE_INPUT = re.compile(r"fg\d+_d([xy])")
"""A Re-harmonize's move of FG layer k: fg<k>_dx, fg<k>_dy."""


@dataclass(frozen=True)
class SetOverride:
    node: str
    """Node id, title or class type (must pick exactly one node)."""
    input: str
    value: Any


def parse_set_override(text: str) -> SetOverride:
    """``NODE.INPUT=VALUE``: NODE is a node id, title or class type; VALUE is JSON when it
    parses as JSON (numbers, true/false, lists), else the text itself."""
    target, sep, raw = text.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise WorkflowError(f"--set expects NODE.INPUT=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return SetOverride(node.strip(), name.strip(), value)


def _find_node(prompt: Mapping[str, Mapping[str, Any]], ref: str) -> str:
    if ref in prompt:
        return ref
    by_title = [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == ref]
    by_type = [nid for nid, n in prompt.items() if n.get("class_type") == ref]
    for found in (by_title, by_type):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise WorkflowError(f"--set: {ref!r} matches nodes {', '.join(found)}; use a node id")
    listing = ", ".join(f"{nid} ({n.get('class_type')})" for nid, n in prompt.items())
    raise WorkflowError(f"--set: no node {ref!r} in the workflow; nodes: {listing}")


def apply_overrides(
    prompt: dict[str, dict[str, Any]],
    values: Mapping[str, Any],
    sets: Iterable[SetOverride] = (),
    object_info: Mapping[str, Any] | None = None,
    scale_layout: bool = False,
) -> list[str]:
    """Apply named overrides (keys of OVERRIDE_TARGETS; None values are skipped) and
    ``--set`` overrides in place; return one description per change. A named override that
    matches no node raises WorkflowError (the workflow is not the one the user thinks), and
    so does a ``--set`` of an input the node's /object_info entry does not declare.

    ``scale_layout``: a new width or height also scales the pixel inputs on that canvas
    (``scale_to_canvas``); ``--set`` overrides come after, so they win."""
    done: list[str] = []
    resizing = scale_layout and any(values.get(option) is not None for option in SIZE_OPTIONS)
    canvases = canvas_sizes(prompt) if resizing else {}
    for option, value in values.items():
        if value is None:
            continue
        if option not in OVERRIDE_TARGETS:
            raise WorkflowError(f"unknown override {option!r}")
        types, name = OVERRIDE_TARGETS[option]
        hits = [nid for nid, n in prompt.items() if n.get("class_type") in types]
        if not hits:
            raise WorkflowError(
                f"--{option.replace('_', '-')}: the workflow has no {' or '.join(types)} node to set {name} on"
            )
        for nid in hits:
            done.append(_set_input(prompt, nid, name, value))
    if resizing:
        done += scale_to_canvas(prompt, canvases, object_info)
    for override in sets:
        nid = _find_node(prompt, override.node)
        class_type = prompt[nid].get("class_type")
        info = (object_info or {}).get(class_type)
        if isinstance(info, Mapping):
            names = [spec.name for spec in node_inputs(info)]
            if override.input not in names:
                raise WorkflowError(
                    f"--set {override.node}.{override.input}: node {nid} ({class_type}) has no input "
                    f"{override.input!r}; its inputs are {', '.join(names) or 'none'}"
                )
        done.append(_set_input(prompt, nid, override.input, override.value))
    return done


def _set_input(prompt: dict[str, dict[str, Any]], node_id: str, name: str, value: Any) -> str:
    inputs = prompt[node_id].setdefault("inputs", {})
    previous = inputs.get(name)
    was_link = isinstance(previous, list) and len(previous) == 2
    inputs[name] = wrap_value(value)
    unlinked = " (replacing its link)" if was_link else ""
    return f"node {node_id} ({prompt[node_id].get('class_type')}) {name} = {value!r}{unlinked}"


# -- the size options scale what is in pixels of the canvas --


def _link_source(value: Any) -> str | None:
    """The node id an API-format input links to, or None for a value."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0])
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def canvas_sizes(prompt: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """(width, height) of every canvas node (Empty Latent Image) whose size is a value."""
    sizes: dict[str, tuple[int, int]] = {}
    for nid, node in prompt.items():
        inputs = node.get("inputs") or {}
        width, height = inputs.get("width"), inputs.get("height")
        if node.get("class_type") in CANVAS_NODES and _whole(width) and _whole(height):
            sizes[nid] = (width, height)
    return sizes


def _canvases_of(prompt: Mapping[str, Mapping[str, Any]], node_id: str) -> set[str] | None:
    """The canvas nodes a node's pixels belong to, or None when one of its samplers starts
    from something else (an encoded image, a resized latent). A Layer Prompt's canvas is the
    one of the samplers its chain reaches (downstream); any other node's is the one of the
    samplers and canvas nodes it comes from (upstream)."""
    downstream = prompt[node_id].get("class_type") in BOX_NODES
    consumers: dict[str, list[str]] = {}
    if downstream:
        for nid, node in prompt.items():
            for value in (node.get("inputs") or {}).values():
                source = _link_source(value)
                if source is not None:
                    consumers.setdefault(source, []).append(nid)
    canvases: set[str] = set()
    seen = {node_id}
    frontier = [node_id]
    while frontier:
        nid = frontier.pop()
        if downstream:
            nexts = consumers.get(nid, [])
        else:
            nexts = [s for v in (prompt[nid].get("inputs") or {}).values() if (s := _link_source(v))]
        for other in nexts:
            if other in seen or other not in prompt:
                continue
            seen.add(other)
            node = prompt[other]
            if node.get("class_type") in CANVAS_NODES:
                canvases.add(other)
                continue
            latent = (node.get("inputs") or {}).get(LATENT_INPUT)
            if latent is None:
                frontier.append(other)
                continue
            source = _link_source(latent)
            if source is None or prompt.get(source, {}).get("class_type") not in CANVAS_NODES:
                return None
            canvases.add(source)
    return canvases


def _spec(object_info: Mapping[str, Any] | None, class_type: str, name: str) -> InputSpec | None:
    info = (object_info or {}).get(class_type)
    if isinstance(info, Mapping):
        for spec in node_inputs(info):
            if spec.name == name:
                return spec
    return None


@dataclass(frozen=True)
class _Grid:
    """An INT input's values: on its step (counted from its min) inside its range."""

    step: int = 1
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def of(cls, spec: InputSpec | None) -> _Grid:
        def number(key: str, default: float) -> float:
            value = spec.options.get(key) if spec is not None else None
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return value if ok else default

        return cls(max(1, int(number("step", 1))), number("min", -math.inf), number("max", math.inf))

    @property
    def base(self) -> float:
        return self.low if math.isfinite(self.low) else 0

    def snap(self, value: float) -> int:
        """The nearest value on the step (halves away from zero)."""
        units = (value - self.base) / self.step
        return int(self.base + self.step * math.copysign(math.floor(abs(units) + 0.5), units))

    def inside(self, value: int, low: float = -math.inf, high: float = math.inf) -> int:
        """``value`` moved into [low, high] and the input's range, onto the step."""
        low, high = max(low, self.low), min(high, self.high)
        if value > high:
            value = int(self.base + self.step * math.floor((high - self.base) / self.step))
        if value < low:
            value = int(self.base + self.step * math.ceil((low - self.base) / self.step))
        return value


def _scaled_box(
    box: Mapping[str, int], size: tuple[int, int], ratio: tuple[float, float], grids: Mapping[str, _Grid]
) -> dict[str, int]:
    """A box's x, y, width, height on the new canvas: its edges scaled and put on the step,
    each side at least MIN_BOX_SIDE and at most the canvas's, the box inside the canvas."""
    out: dict[str, int] = {}
    for start, side, axis in (("x", "width", 0), ("y", "height", 1)):
        first = grids[start].snap(box[start] * ratio[axis])
        end = grids[side].snap((box[start] + box[side]) * ratio[axis])
        out[side] = grids[side].inside(end - first, MIN_BOX_SIDE, size[axis])
        out[start] = grids[start].inside(first, 0, size[axis] - out[side])
    return out


def _pixel_inputs(class_type: str, inputs: Mapping[str, Any]) -> dict[str, str]:
    """The inputs of a node in pixels of its canvas, each with its axis ("x" or "y")."""
    if class_type in BOX_NODES:
        axes = {"x": "x", "y": "y", "width": "x", "height": "y"}
        if not all(name in inputs for name in axes):
            return {}
    else:
        axes = dict(OFFSET_INPUTS.get(class_type, {}))
        if class_type in MOVE_NODES:
            axes.update({name: m.group(1) for name in inputs if (m := MOVE_INPUT.fullmatch(name))})
    return {name: axis for name, axis in axes.items() if name in inputs}


def _canvas_change(
    prompt: Mapping[str, Mapping[str, Any]], node_id: str, before: Mapping[str, tuple[int, int]]
) -> tuple[tuple[int, int], tuple[int, int]] | str:
    """(old size, new size) of the one canvas a node's pixels are on, or why there is none."""
    canvases = _canvases_of(prompt, node_id)
    if not canvases:
        return "it comes from no Empty Latent Image"
    now = canvas_sizes(prompt)
    if any(c not in before or c not in now for c in canvases):
        return "its canvas size is not a number"
    old_sizes, new_sizes = {before[c] for c in canvases}, {now[c] for c in canvases}
    if len(old_sizes) != 1 or len(new_sizes) != 1:
        return "it is on canvases of several sizes"
    return old_sizes.pop(), new_sizes.pop()


def scale_to_canvas(
    prompt: dict[str, dict[str, Any]],
    before: Mapping[str, tuple[int, int]],
    object_info: Mapping[str, Any] | None = None,
) -> list[str]:
    """Scale, in place, the pixel inputs of every node whose canvas (``_canvases_of``) changed
    size since ``before`` (canvas node id -> its old width, height): Layer Prompt boxes,
    Re-harmonize moves (fg<k>_dx, fg<k>_dy), Alpha Composite offsets, by the new/old width and
    height. Rounded to each input's step (from ``object_info``) and kept in its range; a box
    stays inside the canvas with sides of at least MIN_BOX_SIDE, a move or offset stays shorter
    than the canvas. Returns one description per node changed, and per node with pixels that
    could not be scaled (fed by a link, or on no single Empty Latent Image)."""
    done: list[str] = []
    for nid, node in prompt.items():
        class_type = str(node.get("class_type"))
        inputs = node.get("inputs") or {}
        axes = _pixel_inputs(class_type, inputs)
        values = [inputs[name] for name in axes]
        if all(value == 0 for value in values):
            continue  # nothing moved
        if class_type in BOX_NODES and 0 in (inputs["width"], inputs["height"]):
            continue  # no box (or only one side 0, which the node refuses as it is)
        where = f"node {nid} ({class_type}) {', '.join(axes)}"
        linked = [name for name in axes if not _whole(inputs[name])]
        change = _canvas_change(prompt, nid, before) if not linked else f"{', '.join(linked)} not a number"
        if isinstance(change, str):
            done.append(f"{where} not scaled with the canvas size: {change}")
            continue
        (old_w, old_h), (new_w, new_h) = change
        if (old_w, old_h) == (new_w, new_h) or min(old_w, old_h, new_w, new_h) <= 0:
            continue
        ratio = {"x": new_w / old_w, "y": new_h / old_h}
        grids = {name: _Grid.of(_spec(object_info, class_type, name)) for name in axes}
        if class_type in BOX_NODES:
            scaled = _scaled_box(inputs, (new_w, new_h), (ratio["x"], ratio["y"]), grids)
        else:
            scaled = {}
            for name, axis in axes.items():
                side = new_w if axis == "x" else new_h
                grid = grids[name]
                scaled[name] = grid.inside(grid.snap(inputs[name] * ratio[axis]), 1 - side, side - 1)
        inputs.update(scaled)
        done.append(
            f"{where} = {', '.join(str(scaled[n]) for n in axes)} (were {', '.join(map(str, values))}: "
            f"scaled with the canvas, {old_w}x{old_h} -> {new_w}x{new_h})"
        )
    return done
