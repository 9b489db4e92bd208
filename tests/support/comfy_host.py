"""Helpers for host tests: find a real ComfyUI, import it in library mode, load a node pack
through ComfyUI's own loader, build a tiny random SDXL-shaped model, and observe how ComfyUI
batches UNet calls.

Nothing here imports ComfyUI at module level, so collecting tests works without one. Every
function that needs ComfyUI expects ``import_comfyui`` to have run (the ``comfy_host``
fixture does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_COMFYUI_PATH = "COMFYUI_PATH"
_MARKER_FILES = ("nodes.py", "folder_paths.py", "comfy/model_management.py")


class ComfyUIUnavailable(Exception):
    """No usable ComfyUI: the message is the one-line reason host tests are skipped."""


class PackLoadError(RuntimeError):
    """ComfyUI's loader refused a pack; the message carries the loader's own warnings."""


# ---------------------------------------------------------------------------------------
# Finding and importing ComfyUI
# ---------------------------------------------------------------------------------------


class Located(NamedTuple):
    root: Path | None
    how: str
    """Where the root came from, or (root is None) why none was found."""


def looks_like_comfyui(path: Path) -> bool:
    return all((path / name).is_file() for name in _MARKER_FILES)


def find_comfyui(
    environ: Mapping[str, str] | None = None,
    repo_root: Path = REPO_ROOT,
    home: Path | None = None,
) -> Located:
    """Locate a ComfyUI root: ``$COMFYUI_PATH``, else the ComfyUI that holds this pack in its
    ``custom_nodes/``, else ``~/ComfyUI``.

    A set but unusable ``COMFYUI_PATH`` is reported as such and never falls back to the other
    places: whoever set it meant that checkout, and a silent fallback would test another one.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_COMFYUI_PATH, "")
    if explicit:
        path = Path(explicit).expanduser()
        if looks_like_comfyui(path):
            return Located(path.resolve(), f"{ENV_COMFYUI_PATH}={explicit}")
        return Located(
            None,
            f"{ENV_COMFYUI_PATH}={explicit} is not a ComfyUI root (expected {', '.join(_MARKER_FILES)});"
            " not falling back to other locations",
        )
    tried = []
    if repo_root.parent.name == "custom_nodes":
        path = repo_root.parent.parent
        if looks_like_comfyui(path):
            return Located(path.resolve(), f"pack inside {path / 'custom_nodes'}")
        tried.append(str(path))
    path = (home if home is not None else Path.home()) / "ComfyUI"
    if looks_like_comfyui(path):
        return Located(path.resolve(), "~/ComfyUI")
    tried.append(str(path))
    return Located(
        None,
        f"no ComfyUI found ({ENV_COMFYUI_PATH} unset; tried {', '.join(tried)}); "
        "see tests/host/SETUP_COMFYUI.md",
    )


@dataclass
class ComfyHost:
    """A ComfyUI imported in library mode, with the modules host tests use most."""

    root: Path
    how: str
    version: str
    nodes: ModuleType
    folder_paths: ModuleType
    model_management: ModuleType
    model_patcher: ModuleType
    patcher_extension: ModuleType
    sample: ModuleType
    samplers: ModuleType
    sampler_helpers: ModuleType
    supported_models: ModuleType
    latent_preview: ModuleType
    attention: ModuleType
    io: ModuleType
    ui: ModuleType
    ComfyExtension: type

    def use_scratch_folders(self, base: Path) -> None:
        """Point ComfyUI's input/output/temp folders at ``base`` so tests never write into
        the ComfyUI checkout."""
        for kind in ("input", "output", "temp"):
            folder = base / kind
            folder.mkdir(parents=True, exist_ok=True)
            getattr(self.folder_paths, f"set_{kind}_directory")(str(folder))


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _drop_foreign_nodes_module(root: Path) -> None:
    """Forget any ``nodes`` that is not ComfyUI's ``nodes.py`` (this repo's ``nodes/`` folder
    shares the name and sits on sys.path through pytest's ``pythonpath``)."""
    expected = root / "nodes.py"
    for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
        if _module_file(sys.modules[name]) != expected:
            del sys.modules[name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def import_comfyui(located: Located) -> ComfyHost:
    """Import ComfyUI from ``located.root`` in library mode (no argument parsing, CPU).

    Raises ComfyUIUnavailable with a one-line reason when that cannot be done.
    """
    if located.root is None:
        raise ComfyUIUnavailable(located.how)
    root = located.root
    loaded = sys.modules.get("comfy")
    if loaded is not None:
        loaded_file = _module_file(loaded)
        if loaded_file is not None and root not in loaded_file.parents:
            raise ComfyUIUnavailable(f"another ComfyUI is already imported ({loaded_file}), not {root}")

    root_str = str(root)
    if root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)
    _drop_foreign_nodes_module(root)

    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        if "comfy.model_management" not in sys.modules:
            # Read once, when comfy.model_management is first imported.
            comfy.cli_args.args.cpu = True
        import comfy.model_management
    except Exception as exc:
        raise ComfyUIUnavailable(
            f"import comfy.model_management failed in {root}: {_first_line(exc)}"
        ) from exc

    try:
        import comfy.ldm.modules.attention
        import comfy.model_patcher
        import comfy.patcher_extension
        import comfy.sample
        import comfy.sampler_helpers
        import comfy.samplers
        import comfy.supported_models
        import folder_paths
        import latent_preview
        from comfy_api.latest import ComfyExtension, io, ui

        # ComfyUI's nodes.py (ruff files it as first-party because of this repo's nodes/).
        import nodes
    except Exception as exc:
        raise ComfyUIUnavailable(f"importing ComfyUI from {root} failed: {_first_line(exc)}") from exc

    if _module_file(nodes) != root / "nodes.py":
        raise ComfyUIUnavailable(f"'import nodes' gave {nodes.__file__}, not ComfyUI's {root / 'nodes.py'}")

    version = "unknown"
    with contextlib.suppress(Exception):
        import comfyui_version

        version = comfyui_version.__version__

    return ComfyHost(
        root=root,
        how=located.how,
        version=version,
        nodes=nodes,
        folder_paths=folder_paths,
        model_management=comfy.model_management,
        model_patcher=comfy.model_patcher,
        patcher_extension=comfy.patcher_extension,
        sample=comfy.sample,
        samplers=comfy.samplers,
        sampler_helpers=comfy.sampler_helpers,
        supported_models=comfy.supported_models,
        latent_preview=latent_preview,
        attention=comfy.ldm.modules.attention,
        io=io,
        ui=ui,
        ComfyExtension=ComfyExtension,
    )


# ---------------------------------------------------------------------------------------
# Loading a node pack through ComfyUI's loader, and running nodes the way ComfyUI does
# ---------------------------------------------------------------------------------------


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
            if _module_file(sys.modules[name]) == init_file
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


# ---------------------------------------------------------------------------------------
# A tiny SDXL-architecture model with random weights, and inputs for it
# ---------------------------------------------------------------------------------------

TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    "model_channels": 32,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 1, 1],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 64,
    "adm_in_channels": 32 + 6 * 256,
    "use_linear_in_transformer": True,
    "use_spatial_transformer": True,
    "use_temporal_attention": False,
    "legacy": False,
    "num_classes": "sequential",
    "image_size": 32,  # required by UNetModel, unused by SDXL
    "in_channels": 4,
    "out_channels": 4,
}
TINY_SDXL_CONTEXT_DIM = 64
TINY_SDXL_POOLED_DIM = 32
TINY_SDXL_DIM_HEAD = 16


class TinyBlock(NamedTuple):
    key: tuple[str, int, int]
    """(block name, block id, index inside that SpatialTransformer): ComfyUI's replace key."""
    channels: int
    heads: int


def _tiny_blocks() -> tuple[TinyBlock, ...]:
    narrow = (64, 64 // TINY_SDXL_DIM_HEAD)
    wide = (128, 128 // TINY_SDXL_DIM_HEAD)
    layout = [
        (("input", 4), 2, narrow),
        (("input", 5), 2, narrow),
        (("input", 7), 1, wide),
        (("input", 8), 1, wide),
        (("middle", 0), 1, wide),
        (("output", 0), 1, wide),
        (("output", 1), 1, wide),
        (("output", 2), 1, wide),
        (("output", 3), 2, narrow),
        (("output", 4), 2, narrow),
        (("output", 5), 2, narrow),
    ]
    return tuple(
        TinyBlock((name, block_id, index), ch, heads)
        for (name, block_id), depth, (ch, heads) in layout
        for index in range(depth)
    )


TINY_SDXL_BLOCKS: tuple[TinyBlock, ...] = _tiny_blocks()
"""The tiny model's 16 transformer blocks, in UNet execution order (SDXL's layout with depth 10
cut to 1; the same block names and ids as SDXL's 70 blocks)."""


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """Deterministic init: matrices/kernels N(0, 1/fan_in), 1-D weights (norm scales) 1,
    biases N(0, 0.01^2). comfy.ops layers are created uninitialised, so every parameter is set."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)


def build_tiny_sdxl(seed: int = 0) -> Any:
    """A ModelPatcher around a random-weight SDXL-architecture model (comfy.model_base.SDXL,
    EPS, float32, CPU): about 6.7 M parameters, heads of 16 channels (4 heads at 64 channels,
    8 at 128), context 64, pooled 32."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(TINY_SDXL_UNET_CONFIG)
    # BASE.__init__ overwrites num_heads/num_head_channels with (-1, 64): set ours afterwards.
    model_config.unet_config["num_head_channels"] = TINY_SDXL_DIM_HEAD
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = model_config.get_model({}, "", device=cpu)
    init_weights_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def make_cond(
    seed: int,
    tokens: int = 77,
    context_dim: int = TINY_SDXL_CONTEXT_DIM,
    pooled: int = TINY_SDXL_POOLED_DIM,
    batch: int = 1,
) -> list[list[Any]]:
    """A CONDITIONING without text encoders: [[cond [batch, tokens, context_dim],
    {"pooled_output": [batch, pooled]}]], the same tensors for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=generator)
    pooled_output = torch.randn(batch, pooled, generator=generator)
    return [[cond, {"pooled_output": pooled_output}]]


def make_latent(batch: int = 3, height: int = 16, width: int = 16) -> dict[str, torch.Tensor]:
    """An empty LATENT of ``batch`` rows, [batch, 4, height, width] (latent pixels)."""
    return {"samples": torch.zeros(batch, 4, height, width)}


# ---------------------------------------------------------------------------------------
# Observing and steering how ComfyUI batches cond/uncond into UNet calls
# ---------------------------------------------------------------------------------------


class UNetCall(NamedTuple):
    batch: int
    """Rows in this call's input."""
    cond_or_uncond: tuple[int, ...]
    """Chunk order of this call (0 = positive, 1 = negative), each chunk a whole latent batch."""


def record_unet_calls(model_patcher: Any, key: str = "layerfusion_test_probe") -> tuple[Any, list[UNetCall]]:
    """Return a clone of ``model_patcher`` whose every diffusion-model call is appended to the
    returned list (through a DIFFUSION_MODEL wrapper, which composes with other wrappers)."""
    import comfy.patcher_extension

    calls: list[UNetCall] = []

    def probe(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        calls.append(UNetCall(int(x.shape[0]), tuple(transformer_options.get("cond_or_uncond", ()))))
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)

    clone = model_patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, key, probe)
    return clone, calls


@contextlib.contextmanager
def low_free_memory(
    free_bytes: int = 1, callers: tuple[str, ...] | None = ("comfy.samplers",)
) -> Iterator[None]:
    """Make ComfyUI's cond batching see ``free_bytes`` free, so comfy.samplers puts the cond
    and uncond chunks into separate UNet calls (negative first).

    Older hosts ask ``comfy.model_management.get_free_memory`` from comfy.samplers; later
    ones ask the model's patcher (``ModelPatcher.get_free_memory``), whose only caller is
    that batching decision. By default only that decision sees the low figure; model
    loading and the attention chunking keep the real one, so results stay comparable with
    unsplit runs. ``callers=None`` lowers it for every caller of get_free_memory.
    """
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    real = mm.get_free_memory

    def fake(dev=None, torch_free_too=False):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if callers is not None and caller not in callers:
            return real(dev, torch_free_too)
        return (free_bytes, free_bytes) if torch_free_too else free_bytes

    patcher_real = getattr(mp.ModelPatcher, "get_free_memory", None)
    mm.get_free_memory = fake
    if patcher_real is not None:
        mp.ModelPatcher.get_free_memory = lambda self, device=None: free_bytes
    try:
        yield
    finally:
        mm.get_free_memory = real
        if patcher_real is not None:
            mp.ModelPatcher.get_free_memory = patcher_real


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
