"""Reading ``/object_info``: a node type's inputs in declaration order, and the
``widgets_values`` layout the frontend saves for it.

Widget inputs are the required then optional inputs (``input_order``) whose type has a widget
(INT, FLOAT, STRING, BOOLEAN, combos, ...) and that are not ``forceInput``; they take
``widgets_values`` in order. Frontend-only widgets also hold a value there and are skipped:
the ``control_after_generate`` combo after an INT that has that option (or, when unset, is
named ``seed``/``noise_seed``), the control combo plus filter string after a combo with that
option, and the upload button at the end of the required inputs of a node with an
image/video upload combo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
LEGACY_SEED_NAMES = ("seed", "noise_seed")
# Input types the frontend draws as widgets (ComfyWidgets in comfyui-frontend 1.27, plus
# WEBCAM from its core extensions, and COMPOSITOR: the layer editor's state on core's Create
# Layered Image). Any other type is a socket, unless its spec says "socketless".
WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "STRING",
        "BOOLEAN",
        "COMBO",
        "MARKDOWN",
        "COLOR",
        "FILEUPLOAD",
        "TREESELECT",
        "MULTISELECT",
        "SELECTBUTTON",
        "TEXTAREA",
        "WEBCAM",
        "COMPOSITOR",
    }
)
MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str
    """"COMBO" for a list of options (old style) or a "COMBO" spec (V3), else the type name."""
    options: Mapping[str, Any]
    required: bool
    choices: tuple[Any, ...] = ()
    """An old-style combo's option list (V3 combos keep theirs in options["options"])."""

    @property
    def is_widget(self) -> bool:
        if self.options.get("socketless", False):  # a widget with no socket to link
            return True
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def hidden_values_after(self) -> int:
        """How many frontend-only widget values follow this widget's own value."""
        if not self.is_widget:
            return 0
        control = self.options.get("control_after_generate")
        if self.type == "INT":
            if control is None:
                control = self.name in LEGACY_SEED_NAMES
            return 1 if control else 0
        if self.type == "COMBO" and control:
            return 2  # the control combo and its filter-list string
        return 0

    @property
    def has_media_upload(self) -> bool:
        return self.type == "COMBO" and any(self.options.get(key) is True for key in MEDIA_UPLOAD_OPTIONS)


def _spec_type(raw: Any) -> tuple[str, Mapping[str, Any], tuple[Any, ...]]:
    if not isinstance(raw, (list, tuple)) or not raw:
        return "*", {}, ()
    options = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    kind = raw[0]
    if isinstance(kind, (list, tuple)):
        return "COMBO", options, tuple(kind)
    return str(kind), options, ()


def node_inputs(info: Mapping[str, Any]) -> list[InputSpec]:
    """The required then optional inputs of one /object_info entry, in declaration order."""
    inputs = info.get("input", {}) or {}
    order = info.get("input_order", {}) or {}
    specs: list[InputSpec] = []
    for section in ("required", "optional"):
        declared = inputs.get(section, {}) or {}
        names = order.get(section) or list(declared)
        for name in names:
            if name in declared:
                kind, options, choices = _spec_type(declared[name])
                specs.append(InputSpec(name, kind, options, section == "required", choices))
    return specs


@dataclass(frozen=True)
class WidgetSlot:
    name: str | None
    """The input the value belongs to, or None for a frontend-only widget (skipped)."""
    control: bool = False
    """True for a control_after_generate value (recognisable by CONTROL_VALUES)."""


def widget_layout(info: Mapping[str, Any]) -> list[WidgetSlot]:
    """The widgets_values layout the frontend saves for a node of this type."""
    slots: list[WidgetSlot] = []
    specs = node_inputs(info)
    required = [s for s in specs if s.required]
    optional = [s for s in specs if not s.required]
    for group, upload in ((required, any(s.has_media_upload for s in required)), (optional, False)):
        for spec in group:
            if not spec.is_widget:
                continue
            slots.append(WidgetSlot(spec.name))
            extra = spec.hidden_values_after
            if extra:
                slots.append(WidgetSlot(None, control=True))
                slots.extend(WidgetSlot(None) for _ in range(extra - 1))
        if upload:
            slots.append(WidgetSlot(None))
    return slots


def widget_default(spec: InputSpec) -> Any:
    """The value the frontend gives a new widget: the spec's default, else the first combo
    option, 0, "" or False."""
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO":
        options = spec.options.get("options") or spec.choices
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(spec.type, "")


def _looks_like_control(value: Any) -> bool:
    # Very old workflows saved the seed control as a boolean.
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def assign_widget_values(info: Mapping[str, Any], values: Any) -> dict[str, Any]:
    """Map a node's ``widgets_values`` (a list, or a dict keyed by input name) to its inputs.

    When the list has exactly the expected length the layout decides; otherwise the values
    are walked in order and a frontend-only value is skipped only where it looks like one
    (a control value after a seed), so a workflow saved by another frontend version still
    lines up as far as it can.
    """
    layout = widget_layout(info)
    names = {slot.name for slot in layout if slot.name}
    if isinstance(values, Mapping):
        return {name: values[name] for name in names if name in values}
    if not isinstance(values, Sequence) or isinstance(values, str):
        return {}
    result: dict[str, Any] = {}
    if len(values) == len(layout):
        for slot, value in zip(layout, values, strict=True):
            if slot.name is not None:
                result[slot.name] = value
        return result
    position = 0
    skipping = False
    for slot in layout:
        if position >= len(values):
            break
        value = values[position]
        if slot.name is not None:
            result[slot.name] = value
            position += 1
            skipping = False
        elif slot.control:
            skipping = _looks_like_control(value)
            position += 1 if skipping else 0
        elif skipping:  # the filter string after a combo's control value
            position += 1
    return result
