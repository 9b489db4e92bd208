"""A projection's weight and bias as the host casts them for one input, released after use.

ComfyUI's cast ops may keep weights away from the compute device (low VRAM, and dynamic
VRAM from 0.25 on) and patch them per call (LoRAs in low-VRAM mode). Code that needs a
module's weight must take it through the host's cast, and, where the host has the
offloadable protocol (``cast_bias_weight(..., offloadable=True)`` returning a stream that
``uncast_bias_weight`` must release), hand it back once done. Older hosts have only the
plain ``(weight, bias)`` cast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import torch


@functools.cache
def _offloadable_protocol() -> bool:
    import comfy.ops

    return hasattr(comfy.ops, "uncast_bias_weight") and (
        "offloadable" in inspect.signature(comfy.ops.cast_bias_weight).parameters
    )


def _host_casts(module: torch.nn.Module) -> bool:
    return bool(
        getattr(module, "comfy_cast_weights", False)
        or getattr(module, "weight_function", None)
        or getattr(module, "bias_function", None)
    )


@contextlib.contextmanager
def cast_weight_bias(
    module: torch.nn.Module, x: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(weight, bias)`` of ``module`` on x's device and dtype, valid inside the block."""
    if not _host_casts(module):
        bias = module.bias.to(x) if module.bias is not None else None
        yield module.weight.to(x), bias
        return
    import comfy.ops

    if not _offloadable_protocol():
        yield comfy.ops.cast_bias_weight(module, x)
        return
    weight, bias, stream = comfy.ops.cast_bias_weight(module, x, offloadable=True)
    try:
        yield weight, bias
    finally:
        comfy.ops.uncast_bias_weight(module, weight, bias, stream)
