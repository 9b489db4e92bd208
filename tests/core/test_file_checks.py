"""file_checks: whole safetensors files and usable weights, on real files."""

import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

from layerfusion_core.files.checks import safetensors_problem, weights_problem


def test_a_whole_file_passes_and_broken_ones_say_what_is_wrong(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(300, 7), "b": torch.zeros(3)}, good)
    assert safetensors_problem(good) is None
    data = good.read_bytes()
    cases = {
        "empty": (b"", "empty"),
        "short": (b"abc", "fewer than a safetensors header"),
        "truncated": (data[:-1], "truncated"),
        "extended": (data + b"\0", "truncated or corrupt"),
        "pickled": (pickle.dumps({"a": 1}, protocol=2), "pickled"),
        "html": (b"<!DOCTYPE html><html><body>Not here!</body></html>\n", "not a safetensors file"),
    }
    for stem, (body, expected) in cases.items():
        path = tmp_path / f"{stem}.safetensors"
        path.write_bytes(body)
        problem = safetensors_problem(path)
        assert problem is not None and expected in problem, (stem, problem)
    torch.save({"a": torch.ones(2)}, tmp_path / "zip.safetensors")
    assert "pickled" in safetensors_problem(tmp_path / "zip.safetensors")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_named_by_key(value):
    sd = {"ok": torch.ones(4), "bad": torch.ones(4, dtype=torch.float16)}
    sd["bad"][2] = value
    assert weights_problem(sd) == "key 'bad' holds 1 NaN or Inf value(s) of 4"


def test_integer_tensors_are_refused():
    assert weights_problem({"w": torch.ones(2, dtype=torch.int8)}) == (
        "key 'w' is torch.int8, expected floating-point weights"
    )
    assert weights_problem({"w": torch.ones(2, dtype=torch.bfloat16)}) is None
