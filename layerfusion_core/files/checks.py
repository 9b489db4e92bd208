"""Checks on model files before and after they are read: is it a whole safetensors file,
and are its tensors usable weights (floating point, finite)?

Pure standard library for the file check (it reads only the header and the file size), so
a download can be checked before it is moved into place; torch for the tensor check.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import torch

_HEADER_LENGTH_BYTES = 8
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header
_PICKLE_MARKERS = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None when its header and size agree.

    Reads the 8-byte header length, the JSON header and checks that every tensor's data
    lies inside the file and that the data ends where the file ends (a truncated copy
    fails here, not halfway through loading).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        head = fp.read(_HEADER_LENGTH_BYTES)
        if size == 0:
            return "the file is empty"
        length = struct.unpack("<Q", head)[0] if len(head) == _HEADER_LENGTH_BYTES else None
        if length is None or length > min(_MAX_HEADER, size - _HEADER_LENGTH_BYTES):
            return _bad_header_length(head, length, size)
        try:
            header = json.loads(fp.read(length))
        except (UnicodeDecodeError, ValueError):
            return "its header is not valid JSON (corrupt, or not a safetensors file)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (corrupt, or not a safetensors file)"
    return _data_problem(header, size - _HEADER_LENGTH_BYTES - length)


def _bad_header_length(head: bytes, length: int | None, size: int) -> str:
    """Why a header length that cannot be right is wrong; the first bytes say what the file
    is instead."""
    if any(head.startswith(marker) for marker in _PICKLE_MARKERS):
        return "it is a pickled (PyTorch .pt/.ckpt) file renamed to .safetensors, which is never loaded"
    if length is None:
        return f"the file has {size} bytes, fewer than a safetensors header"
    return (
        f"its header says {length} bytes of metadata but the file has {size} bytes in all "
        "(truncated, or not a safetensors file)"
    )


def _data_problem(header: dict, data: int) -> str | None:
    """Why the header's tensors do not end where the ``data`` bytes after it end, or None."""
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {key!r} has no valid data_offsets in the header (corrupt file)"
        end = max(end, offsets[1])
    if end != data:
        return f"its tensors need {end} bytes of data, the file holds {data} (truncated or corrupt)"
    return None


def weights_problem(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose tensor is not floating point or holds NaN/Inf, said as a
    sentence, or None."""
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            return f"key {key!r} is {kind}, expected floating-point weights"
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            return f"key {key!r} holds {bad} NaN or Inf value(s) of {tensor.numel()}"
    return None
