"""Command-line overrides on an API-format prompt: the named options (``--fg``, ``--seed``,
...) and ``--set NODE.INPUT=VALUE``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowError
from .ui_to_api import wrap_value
from .widgets import node_inputs

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
    inputs[name] = wrap_value(value)
    unlinked = " (replacing its link)" if was_link else ""
    return f"node {node_id} ({prompt[node_id].get('class_type')}) {name} = {value!r}{unlinked}"
