"""Loading a node pack through ComfyUI's own loader, and running nodes and prompts the way
ComfyUI's executor does. Every function expects ``comfy_import.import_comfyui`` to have run."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .comfy_import import ComfyHost, module_file


class PackLoadError(RuntimeError):
    """ComfyUI's loader refused a pack; the message carries the loader's own warnings."""


@dataclass
class LoadedPack:
    """A pack loaded by ``nodes.load_custom_node``."""

    path: Path
    module: ModuleType
    node_ids: tuple[str, ...]
    """Node ids this load registered (or replaced) in ``nodes.NODE_CLASS_MAPPINGS``."""
    classes: dict[str, type]
    _replaced: dict[str, type] = field(default_factory=dict, repr=False)

    def node(self, node_id: str) -> type:
        try:
            return self.classes[node_id]
        except KeyError:
            raise KeyError(
                f"pack {self.path.name} registered no node {node_id!r}; it has {sorted(self.classes)}"
            ) from None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run(awaitable_or_value: Any) -> Any:
    if inspect.isawaitable(awaitable_or_value):
        return asyncio.run(awaitable_or_value)
    return awaitable_or_value


def load_pack(host: ComfyHost, path: Path) -> LoadedPack:
    """Load the pack at ``path`` (a folder with ``__init__.py``, or one ``.py`` file) exactly as
    ComfyUI's startup does for ``custom_nodes/``, including that node ids already registered
    (ComfyUI's own) are ignored. Raises PackLoadError with ComfyUI's warnings when the loader
    returns False (it logs and swallows every exception)."""
    nodes = host.nodes
    path = Path(path).resolve()
    before = dict(nodes.NODE_CLASS_MAPPINGS)
    modules_before = set(sys.modules)
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    try:
        ok = _run(nodes.load_custom_node(str(path), ignore=set(before), module_parent="custom_nodes"))
    finally:
        logging.getLogger().removeHandler(collect)
    if not ok:
        detail = " | ".join(m.strip().splitlines()[-1] for m in collect.messages if m.strip())
        raise PackLoadError(f"ComfyUI could not load {path}: {detail or 'no message'}")

    init_file = path if path.is_file() else path / "__init__.py"
    module = next(
        (
            sys.modules[name]
            for name in sys.modules.keys() - modules_before
            if module_file(sys.modules[name]) == init_file
        ),
        None,
    )
    if module is None:
        raise PackLoadError(
            f"ComfyUI reported {path} loaded, but no module for {init_file} is in sys.modules"
        )
    after = nodes.NODE_CLASS_MAPPINGS
    ids = tuple(k for k, cls in after.items() if before.get(k) is not cls)
    replaced = {k: before[k] for k in ids if k in before}
    return LoadedPack(path, module, ids, {k: after[k] for k in ids}, replaced)


def unload_pack(host: ComfyHost, pack: LoadedPack) -> None:
    """Undo ``load_pack``'s registrations (node ids, display names, module entries)."""
    nodes = host.nodes
    for node_id in pack.node_ids:
        if node_id in pack._replaced:
            nodes.NODE_CLASS_MAPPINGS[node_id] = pack._replaced[node_id]
        else:
            nodes.NODE_CLASS_MAPPINGS.pop(node_id, None)
            nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(node_id, None)
    name = pack.module.__name__
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]
    # The loader keys a folder pack by its folder name, a one-file pack by its path minus ".py".
    for key in (pack.path.name, str(pack.path.with_suffix(""))):
        nodes.LOADED_MODULE_DIRS.pop(key, None)
        nodes.EXTENSION_WEB_DIRS.pop(key, None)


def run_node(node_cls: type, hidden: Mapping[Any, Any] | None = None, **inputs: Any) -> Any:
    """Call a node the way ComfyUI's executor does, minus the graph.

    V3 (io.ComfyNode): a class clone carrying ``hidden`` (keys: io.Hidden members, or their
    values such as "PROMPT"), locked against attribute writes, then ``FUNCTION`` (which
    normalises the return value); returns an io.NodeOutput (``.result``, ``.ui``).
    V1: an instance's ``FUNCTION`` method; returns its tuple/dict. Async nodes are awaited.
    """
    from comfy_api.internal import _ComfyNodeInternal, make_locked_method_func
    from comfy_api.latest import io

    if isinstance(node_cls, type) and issubclass(node_cls, _ComfyNodeInternal):
        hidden_inputs = {}
        for key, value in (hidden or {}).items():
            member = key if isinstance(key, io.Hidden) else io.Hidden(key)
            hidden_inputs[member] = value
        node_cls.GET_SCHEMA()
        clone = node_cls.PREPARE_CLASS_CLONE(_class_clone_argument(node_cls, hidden_inputs))
        fn = make_locked_method_func(node_cls, node_cls.FUNCTION, clone)
    else:
        if hidden:
            raise TypeError("hidden inputs are passed as ordinary keyword inputs to V1 nodes")
        fn = getattr(node_cls(), node_cls.FUNCTION)
    return _run(fn(**inputs))


def _class_clone_argument(node_cls: type, hidden_inputs: dict) -> Any:
    """What ``PREPARE_CLASS_CLONE`` takes on this host: the hidden inputs themselves (0.3.x),
    or a V3Data dict carrying them (``v3_data``, later hosts)."""
    parameters = list(inspect.signature(node_cls.PREPARE_CLASS_CLONE).parameters)
    if parameters and parameters[0] == "v3_data":
        return {"hidden_inputs": hidden_inputs}
    return hidden_inputs


def prompt_executor(server: Any) -> Any:
    """ComfyUI's ``execution.PromptExecutor`` with the classic cache, built with the
    arguments this host's constructor wants (later hosts also take ``cache_args``)."""
    import execution

    kwargs: dict[str, Any] = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(server, **kwargs)
