"""Layered PSD export (psd-tools, optional) and atomic writes; no ComfyUI needed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from layerfusion_core.layers import psd as psd_export
from layerfusion_core.layers.psd import (
    PSD_TOOLS_REQUIREMENT,
    PsdToolsMissingError,
    atomic_write,
    check_same_size,
    parse_version,
    psd_writer,
)


def write_layered_psd(path: str, bg: Image.Image, fg: Image.Image, blended: Image.Image) -> None:
    """The triplet's PSD as Save Layers writes it: background, foreground, blended hidden."""
    atomic_write(
        path, psd_writer([("background", bg, True), ("foreground", fg, True), ("blended", blended, False)])
    )


def images(h: int = 24, w: int = 40) -> tuple[Image.Image, Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    bg = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")
    fg = (rng.random((h, w, 4)) * 255).astype(np.uint8)
    fg[..., 3] = np.linspace(0, 255, w).astype(np.uint8)[None, :]  # a full 0..255 alpha ramp
    fg[:4, :, 3] = 0
    blended = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")
    return bg, Image.fromarray(fg, "RGBA"), blended


def test_layered_psd_reopens_with_layers_order_visibility_and_alpha(tmp_path) -> None:
    psd_tools = pytest.importorskip(
        "psd_tools", reason=f"optional dependency missing: {PSD_TOOLS_REQUIREMENT}"
    )
    if parse_version(psd_tools.__version__) < psd_export.PSD_TOOLS_MIN_VERSION:
        pytest.skip(f"psd-tools {psd_tools.__version__} is older than {PSD_TOOLS_REQUIREMENT}")
    bg, fg, blended = images()
    path = tmp_path / "t_layers.psd"
    write_layered_psd(str(path), bg, fg, blended)
    assert os.listdir(tmp_path) == ["t_layers.psd"]  # no temporary file left

    psd = psd_tools.PSDImage.open(path)
    assert psd.size == (40, 24)
    assert [layer.name for layer in psd] == ["background", "foreground", "blended"]  # bottom to top
    assert [layer.visible for layer in psd] == [True, True, False]
    assert all(layer.kind == "pixel" and layer.offset == (0, 0) and layer.size == (40, 24) for layer in psd)
    assert not any(layer.has_mask() for layer in psd)  # alpha is transparency, not a layer mask

    fg_back = np.asarray(psd[1].topil())
    assert fg_back.shape == (24, 40, 4)
    assert np.array_equal(fg_back, np.asarray(fg))  # colour and alpha exact
    for layer, original in ((psd[0], bg), (psd[2], blended)):
        back = np.asarray(layer.topil())
        assert np.array_equal(back[..., :3], np.asarray(original)) and (back[..., 3] == 255).all()

    # The merged image (what layer-unaware viewers show): visible layers only, FG over BG.
    a = np.asarray(fg)[..., 3:] / 255.0
    expected = np.asarray(fg)[..., :3] * a + np.asarray(bg) * (1 - a)
    merged = np.asarray(psd.topil().convert("RGB")).astype(float)
    assert np.abs(merged - expected).max() <= 1.0


def test_psd_size_mismatch_names_the_input(tmp_path) -> None:
    bg, fg, blended = images()
    with pytest.raises(ValueError, match=r"foreground: expected 40x24 \(the size of background\), got 20x24"):
        write_layered_psd(str(tmp_path / "x.psd"), bg, fg.resize((20, 24)), blended)
    assert os.listdir(tmp_path) == []


def test_check_same_size() -> None:
    assert check_same_size([("a", (3, 2)), ("b", (3, 2))]) == (3, 2)
    with pytest.raises(ValueError, match="b: expected 3x2"):
        check_same_size([("a", (3, 2)), ("b", (2, 3))])


def test_missing_psd_tools_message_names_pip_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psd_tools", None)  # import psd_tools -> ImportError
    bg, fg, blended = images()
    with pytest.raises(PsdToolsMissingError, match=r'pip install "psd-tools>=1\.14\.3,<2"'):
        write_layered_psd(str(tmp_path / "x.psd"), bg, fg, blended)
    assert os.listdir(tmp_path) == []


def test_too_old_psd_tools_is_refused(monkeypatch) -> None:
    psd_tools = pytest.importorskip("psd_tools")
    monkeypatch.setattr(psd_tools, "__version__", "1.10.0")
    with pytest.raises(PsdToolsMissingError, match=r"found psd-tools 1\.10\.0"):
        psd_export.import_psd_tools()


def test_parse_version() -> None:
    assert parse_version("1.26.0") == (1, 26, 0)
    assert parse_version("1.15.0.post1") == (1, 15, 0)
    assert parse_version("2") == (2, 0, 0)
    assert parse_version("dev") == (0, 0, 0)


def test_atomic_write_replaces_and_cleans_up(tmp_path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def fail(tmp: str) -> None:
        with open(tmp, "wb") as fp:
            fp.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.png"]

    seen = []

    def write(tmp: str) -> None:
        seen.append(os.path.basename(tmp))
        with open(tmp, "wb") as fp:
            fp.write(b"new")

    atomic_write(str(target), write)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["a.png"]
    assert seen[0].startswith(".") and seen[0].endswith(".tmp") and len(seen[0]) < 24


def psd_tools_or_skip():
    psd_tools = pytest.importorskip(
        "psd_tools", reason=f"optional dependency missing: {PSD_TOOLS_REQUIREMENT}"
    )
    if parse_version(psd_tools.__version__) < psd_export.PSD_TOOLS_MIN_VERSION:
        pytest.skip(f"psd-tools {psd_tools.__version__} is older than {PSD_TOOLS_REQUIREMENT}")
    return psd_tools


def test_layer_names_outside_mac_roman_or_over_255_are_kept_as_unicode_names(tmp_path) -> None:
    psd_tools = psd_tools_or_skip()
    bg, fg, _ = images(4, 6)
    names = {  # name given -> (name read back, legacy Mac Roman name)
        "猫": ("猫", "?"),
        "🐱": ("🐱", "?"),
        "cat 猫 é": ("cat 猫 é", "cat ? é"),
        "x" * 1000: ("x" * 255, "x" * 255),  # Photoshop's limit: 255 characters
        "猫" * 300: ("猫" * 255, "?" * 255),
        # 255 UTF-16 units, and a surrogate pair is never cut in half
        "🐱" * 200: ("🐱" * 127, "?" * 127),
        "a\ud800b": ("a\ufffdb", "a?b"),  # a lone surrogate (JSON can hold one)
        "": ("", ""),
    }
    path = tmp_path / "names.psd"
    atomic_write(str(path), psd_export.psd_writer([(n, fg, True) for n in names] + [("bg", bg, False)]))
    psd = psd_tools.PSDImage.open(path)
    assert [layer.name for layer in psd][:-1] == [read for read, _ in names.values()]
    # A reader that knows only the legacy Pascal name (Mac Roman, at most 255 bytes) gets a stand-in.
    assert [layer._record.name for layer in psd][:-1] == [legacy for _, legacy in names.values()]
    assert psd[-1].name == "bg" and not psd[-1].visible
    assert np.array_equal(np.asarray(psd[0].topil()), np.asarray(fg))


def test_a_canvas_over_30000_px_is_refused_before_psd_tools_runs(tmp_path) -> None:
    wide = Image.new("RGB", (30_001, 1))
    with pytest.raises(ValueError, match=r"save_psd: the canvas is 30001x1 px.*30,000 px"):
        psd_export.psd_writer([("background", wide, True)])
    assert psd_export.check_psd_canvas((30_000, 30_000)) == (30_000, 30_000)
    with pytest.raises(ValueError, match=r"save_psd: the canvas is 1x30001 px"):
        psd_export.check_psd_canvas((1, 30_001))
