"""The save prefix checks (SaveImage's filename_prefix) and the file name length check; no
ComfyUI needed."""

from __future__ import annotations

import os

import pytest

from layerfusion_core.files.writing import (
    MAX_NAME_BYTES,
    check_filename_prefix,
    check_name_length,
    prefix_file_name,
)


def check(prefix: object) -> object:
    return check_filename_prefix(prefix, "filename_prefix", "LayerFusion/layers")


@pytest.mark.parametrize(
    "prefix",
    [
        "layers",
        "LayerFusion/layers",
        "a/b.c/d e-f_g",
        "%year%-%month%-%day%/run %hour%%minute%",
        "b%batch_num%",
        "sub/",  # as ComfyUI takes it: files "sub_00001_…" in the output folder
        ".hidden-folder/layers",  # only the files' own names must not start with "."
        "a/../layers",
        "猫/🐱 layers",
        "CONSOLE/CON",  # CON_00001_fg.png is no device name; only "CON" or "CON.<x>" are
    ],
)
def test_usable_prefixes_pass(prefix):
    assert check(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("a\x00b", r"control character NUL \(U\+0000\) at character 2"),
        ("a\tb", r"U\+0009 at character 2"),
        ("a\x85b", r"U\+0085"),  # C1 control (NEL)
        ("a\x7f", r"U\+007F"),
        ("x/a:b", r"':' at character 4, which Windows does not allow"),
        ("a*", r"'\*' at character 2"),
        (
            "run %date:yyyy-MM-dd%",
            r"':' at character 10 \(a %date:…% token is replaced only by ComfyUI's web",
        ),
        ("CON/x", r"folder name 'CON' cannot be made on Windows"),
        ("lpt1.d/x", r"folder name 'lpt1.d'"),
        ("sub./x", r"folder name 'sub\.'"),
        ("sub /x", r"folder name 'sub '"),
        ("nul.x", r"'nul\.x' starts with a name Windows reserves"),
        ("", r"is empty, which would write hidden files \('\._00001_…'.*e\.g\. 'LayerFusion/layers'"),
        ("  ", r"is empty"),
        ("sub/  ", r"'sub/  ' has an empty file name part"),
        (".", r"the file name part '\.' starts with '\.', which makes hidden files \('\._00001_…'"),
        ("a/..", r"the file name part '\.' \('a/\.\.' resolves to it\) starts with '\.'"),
        ("sub/.layers", r"the file name part '\.layers' starts with '\.'.*'LayerFusion/layers'"),
        (3, r"expected text, got int"),
    ],
)
def test_unusable_prefixes_are_refused_by_name(prefix, message):
    with pytest.raises(ValueError, match=rf"^filename_prefix: .*{message}"):
        check(prefix)


@pytest.mark.skipif(os.sep == "\\", reason="a backslash separates folders on Windows")
def test_a_backslash_is_refused_where_it_is_no_folder_separator():
    with pytest.raises(
        ValueError, match=r"filename_prefix: holds a backslash at character 4.*use / for subfolders"
    ):
        check("sub\\layers")


def test_prefix_file_name_is_what_comfyui_names_the_files():
    assert prefix_file_name("") == prefix_file_name(".") == prefix_file_name("a/..") == "."
    assert prefix_file_name("a/b/") == "b"
    assert prefix_file_name("a/./b") == "b"


def test_name_length_counts_utf8_bytes_with_the_counter_and_the_longest_suffix():
    suffixes = ["_bg.png", "_soft_mask.png", "_layers.psd"]
    room = MAX_NAME_BYTES - len("_00001_soft_mask.png")  # 235
    check_name_length("filename_prefix", "x" * room, "_00001", suffixes)
    with pytest.raises(ValueError, match=rf"filename_prefix: .* has {room + 1} bytes .*at most {room} bytes"):
        check_name_length("filename_prefix", "x" * (room + 1), "_00001", suffixes)
    cats = "猫" * (room // 3 + 1)  # 3 bytes each in UTF-8: 237 bytes
    with pytest.raises(ValueError, match=r"has 237 bytes \(UTF-8\)"):
        check_name_length("filename_prefix", cats, "_00001", suffixes)
    with pytest.raises(ValueError, match=rf"counter '_100000'.*at most {room - 1} bytes"):
        check_name_length("filename_prefix", "x" * room, "_100000", suffixes)
