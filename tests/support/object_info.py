"""``GET /object_info`` computed in-process, the way ComfyUI's server builds each entry
(server.py ``node_info``: V3 nodes describe themselves with GET_NODE_INFO_V1, V1 nodes are read
off INPUT_TYPES/RETURN_TYPES), so workflow checks and UI->API conversion see exactly what a
browser or the headless runner would get from a running server."""

from __future__ import annotations

from typing import Any


def node_info(nodes_module: Any, class_type: str) -> dict[str, Any]:
    from comfy_api.internal import _ComfyNodeInternal

    cls = nodes_module.NODE_CLASS_MAPPINGS[class_type]
    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": class_type,
        "display_name": nodes_module.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }


def object_info(nodes_module: Any, class_types: Any = None) -> dict[str, dict[str, Any]]:
    """Entries for ``class_types`` (default: every registered node)."""
    wanted = nodes_module.NODE_CLASS_MAPPINGS if class_types is None else class_types
    return {
        class_type: node_info(nodes_module, class_type)
        for class_type in wanted
        if class_type in nodes_module.NODE_CLASS_MAPPINGS
    }
