"""Convert a ComfyUI workflow from the UI format (what the browser saves: ``nodes``, ``links``,
``widgets_values``) to the API format ``POST /prompt`` takes (``{node_id: {"class_type",
"inputs"}}``), using the server's ``GET /object_info``; and apply command-line overrides.

Pure standard library and no I/O, so every rule here is unit-tested without a server. The
rules follow what ComfyUI's frontend does when it queues a graph:

- Widget inputs are the required then optional inputs (``input_order``) whose type has a
  widget (INT, FLOAT, STRING, BOOLEAN, combos, ...) and that are not ``forceInput``; they
  take ``widgets_values`` in order. Frontend-only widgets also hold a value there and are
  skipped: the ``control_after_generate`` combo after an INT that has that option (or, when
  unset, is named ``seed``/``noise_seed``), the control combo plus filter string after a
  combo with that option, and the upload button at the end of the required inputs of a node
  with an image/video upload combo.
- A linked input becomes ``[origin_node_id, output_index]``, found through Reroute nodes and
  through bypassed nodes (mode 4: an input of the matching type passes through); a link from
  a PrimitiveNode becomes that primitive's value. A list value is sent as
  ``{"__value__": [...]}``.
- Muted (mode 2) and bypassed nodes are left out, and so are the frontend-only Note,
  MarkdownNote, Reroute and PrimitiveNode.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODE_MUTED = 2
MODE_BYPASSED = 4
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
LEGACY_SEED_NAMES = ("seed", "noise_seed")
# Input types the frontend draws as widgets (ComfyWidgets in comfyui-frontend 1.27, plus
# WEBCAM from its core extensions). Any other type is a socket.
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
    }
)
MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """The workflow cannot be converted or overridden; the message is one line for users."""


class UnknownNodeTypeError(WorkflowError):
    """Node types the server does not know (their pack is not installed or failed to load)."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = tuple(missing)
        """(node id, class type) of every node whose type is unknown."""
        self.class_types = tuple(dict.fromkeys(kind for _, kind in self.missing))
        listing = ", ".join(
            f"{kind} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
            for kind in self.class_types
            for ids in [[nid for nid, k in self.missing if k == kind]]
        )
        super().__init__(f"node types unknown to the server: {listing}")


# ---------------------------------------------------------------------------------------
# Reading /object_info
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# The UI workflow
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    id: int
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


def _links(workflow: Mapping[str, Any]) -> dict[int, Link]:
    links: dict[int, Link] = {}
    for raw in workflow.get("links", []) or []:
        if isinstance(raw, Mapping):
            values = [
                raw.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
            ]
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            values = list(raw[:6]) + [None] * (6 - len(raw[:6]))
        else:
            raise WorkflowError(f"unreadable link entry {raw!r}")
        link_id, origin, origin_slot, target, target_slot, kind = values
        if link_id is None or origin is None or target is None:
            raise WorkflowError(f"unreadable link entry {raw!r}")
        links[int(link_id)] = Link(
            int(link_id),
            str(origin),
            int(origin_slot or 0),
            str(target),
            int(target_slot or 0),
            str(kind or "*"),
        )
    return links


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def is_api_prompt(data: Any) -> bool:
    return (
        isinstance(data, Mapping)
        and bool(data)
        and all(isinstance(v, Mapping) and "class_type" in v for v in data.values())
    )


@dataclass
class Conversion:
    prompt: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    """Things the user may want to know (inputs dropped because their source is muted, ...)."""


@dataclass(frozen=True)
class _Value:
    value: Any


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
        self.object_info = object_info
        self.links = _links(workflow)
        self.nodes: dict[str, Mapping[str, Any]] = {}
        for node in workflow.get("nodes", []):
            if not isinstance(node, Mapping) or "id" not in node:
                raise WorkflowError(f"unreadable node entry {str(node)[:80]!r}")
            self.nodes[str(node["id"])] = node
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraph_ids = {str(s.get("id")) for s in subgraphs if isinstance(s, Mapping)}
        self.notes: list[str] = []

    def convert(self) -> Conversion:
        executing = [(node_id, node) for node_id, node in self.nodes.items() if self._executes(node)]
        unknown = [
            (nid, str(node["type"])) for nid, node in executing if node["type"] not in self.object_info
        ]
        if unknown:
            raise UnknownNodeTypeError(unknown)
        prompt = {node_id: self._convert_node(node_id, node) for node_id, node in executing}
        return Conversion(prompt, self.notes)

    def _executes(self, node: Mapping[str, Any]) -> bool:
        kind = str(node.get("type", ""))
        node_id = str(node.get("id"))
        if kind in FRONTEND_ONLY_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            return False
        if kind in self.subgraph_ids:
            raise WorkflowError(
                f"node {node_id} is a subgraph, which this runner does not expand: open the workflow "
                "in ComfyUI, unpack the subgraph and save it again"
            )
        if kind.startswith(("workflow>", "workflow/")):
            raise WorkflowError(
                f"node {node_id} is a group node ({kind}), which this runner does not expand: "
                "convert it back to nodes in ComfyUI and save the workflow again"
            )
        return True

    def _convert_node(self, node_id: str, node: Mapping[str, Any]) -> dict[str, Any]:
        kind = str(node["type"])
        info = self.object_info[kind]
        specs = {spec.name: spec for spec in node_inputs(info)}
        inputs: dict[str, Any] = {}
        saved = assign_widget_values(info, node.get("widgets_values"))
        for spec in specs.values():
            if spec.is_widget:
                value = saved[spec.name] if spec.name in saved else widget_default(spec)
                inputs[spec.name] = _wrap(value)
        for slot in node.get("inputs", []) or []:
            if not isinstance(slot, Mapping):
                continue
            widget = slot.get("widget")
            name = (
                widget.get("name") if isinstance(widget, Mapping) and widget.get("name") else slot.get("name")
            )
            link_id = slot.get("link")
            if name is None or link_id is None:
                continue
            spec = specs.get(name)
            source = self._resolve_link(int(link_id), str(slot.get("type", "*")), node_id, name, spec)
            if source is None:  # a widget keeps its own value, as in the frontend
                continue
            inputs[name] = _wrap(source.value) if isinstance(source, _Value) else source
        title = node.get("title") or info.get("display_name") or kind
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}

    def _resolve_link(
        self,
        link_id: int,
        target_type: str,
        target_id: str,
        target_input: str,
        spec: InputSpec | None,
        seen: frozenset[int] = frozenset(),
    ) -> list[Any] | _Value | None:
        """``[origin_id, slot]`` of the executing output feeding a link, a primitive's value,
        or None when nothing feeds it (a muted source, an unconnected reroute)."""
        if link_id in seen:
            raise WorkflowError(f"links loop through reroutes or bypassed nodes at link {link_id}")
        seen = seen | {link_id}
        link = self.links.get(link_id)
        if link is None:
            raise WorkflowError(
                f"node {target_id} input {target_input} uses link {link_id}, which is missing"
            )
        origin = self.nodes.get(link.origin_id)
        if origin is None:
            raise WorkflowError(f"link {link_id} comes from node {link.origin_id}, which is missing")
        kind = str(origin.get("type", ""))
        mode = origin.get("mode", 0)
        if kind == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            if not values:
                raise WorkflowError(f"PrimitiveNode {link.origin_id} has no value")
            return _Value(values[0] if isinstance(values, list) else next(iter(values.values())))
        if kind == "Reroute":
            upstream = self._input_link(origin, 0)
            if upstream is None:
                return self._nothing(
                    target_id, target_input, spec, f"reroute {link.origin_id} is not connected"
                )
            return self._resolve_link(upstream, target_type, target_id, target_input, spec, seen)
        if mode == MODE_BYPASSED:
            index = _bypass_input_index(origin, link.origin_slot, target_type)
            upstream = self._input_link(origin, index) if index is not None else None
            if upstream is None:
                return self._nothing(
                    target_id,
                    target_input,
                    spec,
                    f"its source node {link.origin_id} ({kind}) is bypassed and has no connected input "
                    f"of type {target_type} to pass through",
                )
            return self._resolve_link(upstream, target_type, target_id, target_input, spec, seen)
        if mode == MODE_MUTED:
            return self._nothing(
                target_id, target_input, spec, f"its source node {link.origin_id} ({kind}) is muted"
            )
        if kind in FRONTEND_ONLY_NODES:
            raise WorkflowError(f"node {target_id} input {target_input} is linked to a {kind} node")
        return [link.origin_id, link.origin_slot]

    def _nothing(self, target_id: str, target_input: str, spec: InputSpec | None, why: str) -> None:
        if spec is not None and spec.required and not spec.is_widget:
            raise WorkflowError(f"node {target_id} input {target_input} gets no value: {why}")
        self.notes.append(f"node {target_id} input {target_input} left unset: {why}")
        return None

    @staticmethod
    def _input_link(node: Mapping[str, Any], index: int) -> int | None:
        inputs = node.get("inputs", []) or []
        if 0 <= index < len(inputs) and isinstance(inputs[index], Mapping):
            link = inputs[index].get("link")
            return int(link) if link is not None else None
        return None


def _types_match(a: str, b: str) -> bool:
    if a in ("*", "") or b in ("*", ""):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def _bypass_input_index(node: Mapping[str, Any], output_slot: int, target_type: str) -> int | None:
    """The input a bypassed node passes to output ``output_slot`` (the frontend's rule: the
    input at the same index when its type fits, else the first input of the same type)."""
    inputs = [i for i in node.get("inputs", []) or [] if isinstance(i, Mapping)]
    outputs = node.get("outputs", []) or []
    output_type = str(outputs[output_slot].get("type", "*")) if output_slot < len(outputs) else "*"
    if target_type in ("*", ""):
        return output_slot if len(inputs) > output_slot else (0 if inputs else None)
    if output_slot < len(inputs):
        own = str(inputs[output_slot].get("type", "*"))
        if _types_match(own, output_type) and _types_match(own, target_type):
            return output_slot
    for index, slot in enumerate(inputs):
        if str(slot.get("type")) == target_type:
            return index
    for index, slot in enumerate(inputs):
        own = str(slot.get("type", "*"))
        if _types_match(own, output_type) and _types_match(own, target_type):
            return index
    return None


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def convert_workflow(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """``ui_to_api`` plus the notes gathered on the way."""
    if not is_ui_workflow(workflow):
        raise WorkflowError("not a UI-format workflow (no 'nodes' list)")
    return _Converter(workflow, object_info).convert()


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The API-format prompt for a UI-format workflow, given the server's /object_info."""
    return convert_workflow(workflow, object_info).prompt


# ---------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------

# (option, node types, input) - an option sets that input on every node of those types.
OVERRIDE_TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "fg": (("LayerFusionTextEncode",), "fg_text"),
    "bg": (("LayerFusionTextEncode",), "bg_text"),
    "blended": (("LayerFusionTextEncode",), "blended_text"),
    "seed": (("LayerFusionTripletSampler", "KSampler"), "seed"),
    "steps": (("LayerFusionTripletSampler", "KSampler", "KSamplerAdvanced"), "steps"),
    "width": (("EmptyLatentImage",), "width"),
    "height": (("EmptyLatentImage",), "height"),
    "batch_size": (("EmptyLatentImage",), "batch_size"),
}


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
) -> list[str]:
    """Apply named overrides (keys of OVERRIDE_TARGETS; None values are skipped) and
    ``--set`` overrides in place; return one description per change. A named override that
    matches no node raises WorkflowError (the workflow is not the one the user thinks), and
    so does a ``--set`` of an input the node's /object_info entry does not declare."""
    done: list[str] = []
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
    inputs[name] = _wrap(value)
    unlinked = " (replacing its link)" if was_link else ""
    return f"node {node_id} ({prompt[node_id].get('class_type')}) {name} = {value!r}{unlinked}"
