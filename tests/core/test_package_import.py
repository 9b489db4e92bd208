"""The root __init__.py imports without ComfyUI and from a folder whose name has a hyphen."""

import asyncio
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_root_init_imports_without_comfyui(tmp_path):
    pack = tmp_path / "ComfyUI-LayerFusion"
    pack.mkdir()
    shutil.copy(REPO / "__init__.py", pack / "__init__.py")
    spec = importlib.util.spec_from_file_location("ComfyUI-LayerFusion", pack / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    blocked = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "comfy" or name.startswith("comfy.")
    }
    try:
        spec.loader.exec_module(module)
        assert module.WEB_DIRECTORY == "./web"
        assert asyncio.iscoroutinefunction(module.comfy_entrypoint)
        assert not any(name == "comfy" or name.startswith("comfy.") for name in sys.modules)
    finally:
        sys.modules.update(blocked)


CORE = REPO / "layerfusion_core"
ADAPTER = CORE / "comfy_runtime"
CORE_MODULES = sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.py") if ADAPTER not in p.parents)
HOST_IMPORTS = ("import comfy", "from comfy", "folder_paths", "import nodes", "from nodes", "import server")


def test_the_walk_reaches_every_core_subpackage():
    subpackages = {p.parent.name for p in CORE.rglob("*.py") if p.parent != CORE and ADAPTER not in p.parents}
    assert {"method", "architectures", "models", "layers", "files"} <= subpackages
    assert not any(m.startswith("comfy_runtime") for m in CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_modules_do_not_import_the_host(module):
    """Every core module, in every subpackage but the host adapter, is host-free."""
    source = (CORE / module).read_text()
    for host in HOST_IMPORTS:
        assert host not in source, f"layerfusion_core/{module} mentions {host!r}"
