"""The merged FG weights (base + strength * delta) of every projection, kept across runs.

One ``MergedWeightCache`` belongs to one loaded FG file (``ForegroundWeights.merged``, shared
by its strength/application views). It holds at most one merged copy per projection: a
lookup whose key differs from the stored one rebuilds that projection's copy and drops the
old one, so the cache never holds more than one merged copy of the covered weights.

The key says which base weights the copy was built from:
- inside ComfyUI, ``weights_id``: the ModelPatcher's weight-patch set applied to the model
  (``current_weight_patches_uuid``, what ComfyUI itself uses to decide whether to re-patch),
  read once per run; re-patching the same set rewrites the same values, so the copy stays
  valid even when the weight tensors are replaced;
- without one (pure torch), the live weight tensor itself (held weakly, never by address)
  and its in-place version counter.
Both add the projection, the strength, and the device and dtype of the computation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .fg_weights import LoraFactors, Offset

WeightGetter = Callable[
    [torch.nn.Module, torch.Tensor], AbstractContextManager[tuple[torch.Tensor, torch.Tensor | None]]
]
"""``with get(module, x) as (weight, bias)``: the module's weight and bias on x's device and
dtype, valid inside the block (the host may hand back a cast buffer afterwards)."""


@dataclass
class _Entry:
    key: tuple
    source: weakref.ref | None  # the base weight tensor when keyed on it, else None
    weight: torch.Tensor
    bias: torch.Tensor | None


class MergedWeightCache:
    """Merged weight copies by projection path; ``num_bytes`` for memory accounting."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.builds = 0  # merged copies built so far (tests and benchmarks read it)

    def __deepcopy__(self, memo: dict) -> MergedWeightCache:
        return self

    def lookup(
        self,
        path: str,
        module: torch.nn.Module,
        x: torch.Tensor,
        delta: LoraFactors | Offset,
        strength: float,
        weights_id: object | None,
        weight_getter: WeightGetter,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of ``module`` merged with ``strength * delta``, on x's device/dtype."""
        base = module.weight
        if weights_id is None:
            source = weakref.ref(base)
            bias_version = None if module.bias is None else module.bias._version
            key = (path, "tensor", id(base), base._version, bias_version, strength, x.device, x.dtype)
        else:
            source = None
            key = (path, "id", weights_id, strength, x.device, x.dtype)
        entry = self._entries.get(path)
        if entry is not None and entry.key == key and (source is None or entry.source() is base):
            return entry.weight, entry.bias
        self._entries.pop(path, None)  # free the stale copy before building the new one
        # A cache: it holds no autograd graph, and nothing of the host's cast buffers.
        with torch.no_grad(), weight_getter(module, x) as (weight, bias):
            merged = (weight.float() + strength * delta.dense().to(weight.device)).to(weight.dtype)
            if delta.bias is not None:
                extra = strength * delta.bias.to(device=x.device, dtype=torch.float32)
                bias = (extra if bias is None else bias.float() + extra).to(x.dtype)
            elif bias is not None:
                bias = bias.clone()  # a copy: the cached pair must not follow later edits
        self._entries[path] = _Entry(key, source, merged, bias)
        self.builds += 1
        return merged, bias

    @property
    def num_bytes(self) -> int:
        """Bytes held by the merged copies (weights and biases)."""
        total = 0
        for entry in self._entries.values():
            for t in (entry.weight, entry.bias):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def __len__(self) -> int:
        return len(self._entries)

    def release(self) -> None:
        """Drop every merged copy (the model was unloaded, or the memory is wanted back)."""
        self._entries.clear()
