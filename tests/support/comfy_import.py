"""Finding a real ComfyUI and importing it in library mode (no argument parsing, CPU).

Nothing here imports ComfyUI at module level, so collecting tests works without one; the
``comfy_host`` fixture (tests/host/conftest.py) calls ``import_comfyui(find_comfyui())``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_COMFYUI_PATH = "COMFYUI_PATH"
_MARKER_FILES = ("nodes.py", "folder_paths.py", "comfy/model_management.py")


class ComfyUIUnavailable(Exception):
    """No usable ComfyUI: the message is the one-line reason host tests are skipped."""


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


def module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _drop_foreign_nodes_module(root: Path) -> None:
    """Forget any ``nodes`` that is not ComfyUI's ``nodes.py`` (this repo's ``nodes/`` folder
    shares the name and sits on sys.path through pytest's ``pythonpath``)."""
    expected = root / "nodes.py"
    for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
        if module_file(sys.modules[name]) != expected:
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
        loaded_file = module_file(loaded)
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

    if module_file(nodes) != root / "nodes.py":
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
