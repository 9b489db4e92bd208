"""What a real-browser host test needs: Debian's chromium and Playwright's Python package (no
browser download). ``require_browser()`` gives chromium's path, or skips the calling test module
with a one-line reason saying how to get what is missing."""

from __future__ import annotations

import importlib.util

import pytest
from scratch_comfyui.editor import find_chromium


def require_browser() -> str:
    """Chromium's path; skips the module when chromium or the playwright package is missing."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "browser test skipped: no chromium (apt-get install -y chromium, or set LAYERFUSION_CHROMIUM)",
            allow_module_level=True,
        )
    if importlib.util.find_spec("playwright") is None:
        pytest.skip(
            "browser test skipped: the playwright package is missing (pip install playwright; "
            "no browser download is needed)",
            allow_module_level=True,
        )
    return chromium
