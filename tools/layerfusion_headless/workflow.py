"""Reading the workflow file (UI format or API prompt) and building the API prompt to queue:
conversion with the server's ``/object_info``, then the overrides."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, RunError, UnknownNodeTypeError, WorkflowError
from .overrides import SetOverride, apply_overrides
from .refusals import unknown_type_message
from .ui_to_api import convert_workflow, is_api_prompt, is_ui_workflow


def load_workflow(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RunError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save the workflow as JSON",
            EXIT_USAGE,
        ) from exc
    except OSError as exc:
        raise RunError(f"cannot read the workflow {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", EXIT_USAGE
        ) from exc
    except RecursionError as exc:
        raise RunError(f"{path} nests JSON too deeply to be a workflow", EXIT_USAGE) from exc
    if is_ui_workflow(data):
        check_ui_shape(data, path)
    if isinstance(data, Mapping) and is_api_prompt(data.get("prompt")):
        data = data["prompt"]
    if not (is_ui_workflow(data) or is_api_prompt(data)):
        raise RunError(
            f"{path} is neither a UI-format workflow (with a 'nodes' list) nor an API-format prompt",
            EXIT_USAGE,
        )
    return data


def check_ui_shape(workflow: Mapping[str, Any], path: str) -> None:
    """The fields the conversion relies on: every node has an id and a ``type`` string,
    every link a numeric id and endpoints. RunError (exit 2) naming the first bad one."""
    for index, node in enumerate(workflow.get("nodes") or []):
        where = f"{path}: node {index + 1} of the nodes list"
        if not isinstance(node, Mapping):
            raise RunError(f"{where} is not an object", EXIT_USAGE)
        if not isinstance(node.get("id"), (int, str)) or isinstance(node.get("id"), bool):
            raise RunError(f"{where} has no id", EXIT_USAGE)
        if not isinstance(node.get("type"), str) or not node["type"]:
            raise RunError(f"{where} (id {node['id']}) has no type (the node's class name)", EXIT_USAGE)
    for index, link in enumerate(workflow.get("links") or []):
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
        fields = [link.get(k) for k in keys] if isinstance(link, Mapping) else link
        numeric = (
            isinstance(fields, list)
            and len(fields) >= 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in fields[:5])
        )
        if not numeric:
            raise RunError(
                f"{path}: link {index + 1} of the links list is {link!r}; expected [id, from node, from slot, "
                "to node, to slot, type] with whole numbers",
                EXIT_USAGE,
            )


def build_prompt(
    workflow: Any,
    object_info: Mapping[str, Any],
    named: Mapping[str, Any],
    sets: Sequence[SetOverride],
    server: str,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The API prompt with overrides applied, and notes for the user."""
    notes: list[str] = []
    try:
        if is_ui_workflow(workflow):
            conversion = convert_workflow(workflow, object_info)
            prompt, notes = conversion.prompt, list(conversion.notes)
        else:
            prompt = json.loads(json.dumps(workflow))
            unknown = [
                (nid, n["class_type"]) for nid, n in prompt.items() if n["class_type"] not in object_info
            ]
            if unknown:
                raise UnknownNodeTypeError(unknown)
        changes = apply_overrides(prompt, named, sets, object_info, scale_layout=True)
        notes += [f"set {change}" for change in changes]
    except UnknownNodeTypeError as exc:
        raise RunError(unknown_type_message(exc, server), EXIT_USAGE) from exc
    except WorkflowError as exc:
        raise RunError(str(exc), EXIT_USAGE) from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise RunError(f"the workflow is malformed ({type(exc).__name__}: {exc})", EXIT_USAGE) from exc
    if not prompt:
        raise RunError("the workflow has no nodes to run", EXIT_USAGE)
    return prompt, notes


def load_json_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}", EXIT_USAGE) from exc
