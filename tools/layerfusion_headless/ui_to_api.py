"""Convert a ComfyUI workflow from the UI format (what the browser saves: ``nodes``, ``links``,
``widgets_values``) to the API format ``POST /prompt`` takes (``{node_id: {"class_type",
"inputs"}}``), using the server's ``GET /object_info``.

Pure standard library and no I/O, so every rule here is unit-tested without a server. The
rules follow what ComfyUI's frontend does when it queues a graph:

- Widget inputs take ``widgets_values`` in order (the layout is ``widgets.widget_layout``'s).
- A linked input becomes ``[origin_node_id, output_index]``, found through Reroute nodes and
  through bypassed nodes (mode 4: an input of the matching type passes through); a link from
  a PrimitiveNode becomes that primitive's value. A list value is sent as
  ``{"__value__": [...]}``.
- Muted (mode 2) and bypassed nodes are left out, and so are the frontend-only Note,
  MarkdownNote, Reroute and PrimitiveNode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UnknownNodeTypeError, WorkflowError
from .widgets import InputSpec, assign_widget_values, node_inputs, widget_default

MODE_MUTED = 2
MODE_BYPASSED = 4
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})


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
                inputs[spec.name] = wrap_value(value)
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
            inputs[name] = wrap_value(source.value) if isinstance(source, _Value) else source
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


def wrap_value(value: Any) -> Any:
    """An API-format input value: a list is sent as ``{"__value__": [...]}`` (a bare list
    would read as a link)."""
    return {"__value__": value} if isinstance(value, list) else value


def convert_workflow(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """``ui_to_api`` plus the notes gathered on the way."""
    if not is_ui_workflow(workflow):
        raise WorkflowError("not a UI-format workflow (no 'nodes' list)")
    return _Converter(workflow, object_info).convert()


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The API-format prompt for a UI-format workflow, given the server's /object_info."""
    return convert_workflow(workflow, object_info).prompt
