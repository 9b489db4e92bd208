"""ComfyUI core's layer system (the LAYERS type, Add Layer, Layers From Bounding Boxes and Create
Layered Image, ComfyUI 0.33 and later): whether a host has it, and loading its nodes the way a
server does at startup. Nothing here imports ComfyUI at module level."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

CORE_LAYER_NODES = ("AddLayer", "LayersFromBoundingBoxes", "ImageCompositor")
"""Core's layer nodes (comfy_extras/nodes_compositor.py); ImageCompositor is "Create Layered Image"."""
CORE_LAYERS_SINCE = "0.33"


def missing_core_layer_nodes(known: Iterable[str]) -> list[str]:
    """The core layer node ids not among ``known`` (node ids, e.g. /object_info's keys)."""
    known = set(known)
    return [node_id for node_id in CORE_LAYER_NODES if node_id not in known]


def no_core_layers_reason(version: str, missing: Iterable[str]) -> str:
    """The one-line reason a test that needs core's layer nodes is skipped."""
    return (
        f"ComfyUI {version} has no core layer nodes ({', '.join(missing)}; ComfyUI "
        f"{CORE_LAYERS_SINCE} and later)"
    )


def load_core_layer_nodes(host: Any) -> list[str]:
    """Register ComfyUI's built-in extra nodes in ``host.nodes`` as a server does at startup
    (where that has not happened yet); return the core layer nodes still missing (none on a
    host that has the layer system)."""
    nodes = host.nodes
    if missing_core_layer_nodes(nodes.NODE_CLASS_MAPPINGS) and "MaskToImage" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_builtin_extra_nodes())
    return missing_core_layer_nodes(nodes.NODE_CLASS_MAPPINGS)
