"""Host-test harness: every test in tests/host runs against a real ComfyUI, imported in library
mode, or is skipped with one line saying why.

Where ComfyUI is looked for (first hit wins):
  1. ``$COMFYUI_PATH`` - if set but not a ComfyUI root, host tests skip with that reason
     (no silent fallback to another checkout);
  2. the ComfyUI that holds this pack, when the repo sits in ``<ComfyUI>/custom_nodes/``;
  3. ``~/ComfyUI``.
``LAYERFUSION_REQUIRE_COMFYUI=1`` turns the skip into a failure (for CI that must test the host).
``LAYERFUSION_TEST_THREADS`` sets torch's intra-op threads during host tests (default 1: on a
small, shared CPU machine multi-threaded tiny ops run 20x slower, and results stay reproducible).

Fixtures: comfy_host, pack, tiny_sdxl, make_tiny_sdxl, forced_split, layer_model_dir (see each
docstring).
Helpers that are not fixtures live in ``support``: ``comfy_import`` (find and import ComfyUI),
``pack_loading`` (load a pack, run a node or a prompt), ``tiny_sdxl`` (the tiny model and its
inputs) and ``host_probes`` (UNet-call batching, free memory, torch threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.comfy_import import REPO_ROOT, ComfyHost, ComfyUIUnavailable, find_comfyui, import_comfyui
from support.host_probes import low_free_memory, torch_threads
from support.pack_loading import LoadedPack, load_pack
from support.tiny_sdxl import build_tiny_sdxl

ENV_REQUIRE = "LAYERFUSION_REQUIRE_COMFYUI"
ENV_THREADS = "LAYERFUSION_TEST_THREADS"

_skip_reason: list[str] = []


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE, "") not in ("", "0"):
        pytest.fail(f"{ENV_REQUIRE} is set but ComfyUI is unavailable: {reason}", pytrace=False)
    if not _skip_reason:
        _skip_reason.append(reason)
    pytest.skip(f"ComfyUI host tests skipped: {reason}")


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory: pytest.TempPathFactory) -> ComfyHost:
    """ComfyUI imported in library mode (CPU), with its input/output/temp folders moved to a
    session scratch folder. Attributes: root, how, version, nodes, folder_paths,
    model_management, model_patcher, patcher_extension, sample, samplers, sampler_helpers,
    supported_models, latent_preview, attention (comfy.ldm.modules.attention), io, ui,
    ComfyExtension."""
    try:
        host = import_comfyui(find_comfyui())
    except ComfyUIUnavailable as exc:
        _unavailable(str(exc))
    host.use_scratch_folders(tmp_path_factory.mktemp("comfyui"))
    return host


@pytest.fixture(autouse=True)
def _host_test_environment(comfy_host: ComfyHost) -> Iterator[None]:
    """Every host test needs ComfyUI (else it skips) and runs with few torch threads."""
    with torch_threads(int(os.environ.get(ENV_THREADS, "1"))):
        yield


@pytest.fixture(scope="session")
def pack(comfy_host: ComfyHost) -> LoadedPack:
    """This repository loaded through ComfyUI's own ``nodes.load_custom_node`` (as ComfyUI does
    at startup for custom_nodes/). ``pack.node("LayerFusionX")`` gives the registered class,
    ``pack.node_ids`` all ids, ``pack.module`` the loaded root module. A failed load raises
    PackLoadError carrying ComfyUI's warning (the loader itself only logs)."""
    return load_pack(comfy_host, REPO_ROOT)


@pytest.fixture(scope="session")
def make_tiny_sdxl(comfy_host: ComfyHost) -> Callable[..., Any]:
    """Factory ``make_tiny_sdxl(seed=0) -> ModelPatcher``: a fresh tiny random SDXL model."""
    return build_tiny_sdxl


@pytest.fixture(scope="session")
def tiny_sdxl(make_tiny_sdxl: Callable[..., Any]) -> Any:
    """One tiny random SDXL ModelPatcher (seed 0) shared by the session: ``.clone()`` it before
    adding patches or wrappers."""
    return make_tiny_sdxl(0)


@pytest.fixture
def forced_split(comfy_host: ComfyHost) -> Iterator[None]:
    """While active, ComfyUI's cond batching sees almost no free memory, so cond and uncond
    go into separate UNet calls (negative first), as on a GPU short of memory."""
    with low_free_memory():
        yield


@pytest.fixture
def layer_model_dir(comfy_host: ComfyHost, tmp_path):
    """A scratch folder first in ComfyUI's ``layer_model`` search paths (removed afterwards)."""
    import folder_paths

    paths, _ = folder_paths.folder_names_and_paths["layer_model"]
    paths.insert(0, str(tmp_path))
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    paths.remove(str(tmp_path))
    folder_paths.filename_list_cache.clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skip_reason:
        terminalreporter.write_line(f"tests/host skipped: {_skip_reason[0]}")
