"""Applying a FG weight delta to selected batch rows only.

Each attention projection of the model is swapped (on a clone) for a subclass instance of
its own class that computes the base output for every row, then adds the delta to the FG
rows that a ``RowSelection`` names for the current UNet call. The other rows are left
bit-identical.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .fg_weights import LoraFactors, Offset
from .options import WeightApplication


class RowSelection:
    """Which rows of the current call get the FG delta; set per UNet call by the host.

    ``indices`` is None when no row is selected (the module then behaves like its base).
    """

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> RowSelection:
        return self


WeightGetter = Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def plain_weight(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight and bias on x's device and dtype."""
    bias = module.bias.to(x) if module.bias is not None else None
    return module.weight.to(x), bias


class RowDelta:
    """The FG delta of one projection, applied to selected rows of its output."""

    def __init__(
        self,
        delta: LoraFactors | Offset,
        strength: float,
        application: WeightApplication,
        selection: RowSelection,
        weight_getter: WeightGetter = plain_weight,
    ) -> None:
        self.delta = delta
        self.strength = strength
        self.application = WeightApplication(application)
        self.selection = selection
        self.weight_getter = weight_getter
        self._cache: dict[tuple, torch.Tensor] = {}

    def _tensor(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = t.to(device=like.device, dtype=like.dtype)
        return cached

    def _merged_weight(
        self, module: torch.nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.weight_getter(module, x)
        # Keyed on the live weight (its storage and version) so a weight patched after the
        # cache was filled (another LoRA, a reload) is never served stale.
        key = ("merged", weight.data_ptr(), weight._version, weight.device, weight.dtype)
        cached = self._cache.get(key)
        if cached is None:
            for k in [k for k in self._cache if k[0] == "merged"]:
                del self._cache[k]
            merged = weight.float() + self.strength * self.delta.dense().to(weight.device)
            cached = self._cache[key] = merged.to(weight.dtype)
        if self.delta.bias is not None:
            extra = self.strength * self.delta.bias.to(x)
            bias = extra if bias is None else bias + extra
        return cached, bias

    def apply(self, module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` = base(x) for all rows; returns it with the FG rows given the delta."""
        rows = self.selection.indices
        if rows is None or rows.numel() == 0 or self.strength == 0:
            return out
        rows = rows.to(x.device)
        x_rows = x.index_select(0, rows)
        if self.application == WeightApplication.MERGED:
            weight, bias = self._merged_weight(module, x)
            return out.index_copy(0, rows, F.linear(x_rows, weight, bias))
        extra = self.delta.row_delta(x_rows, lambda name, t: self._tensor(name, t, x)) * self.strength
        return out.index_add(0, rows, extra.to(out.dtype))

    def release(self) -> None:
        """Drop device copies (end of a sampling run)."""
        self._cache.clear()


_ROW_CLASSES: dict[type, type] = {}
_ROW_DELTAS: weakref.WeakKeyDictionary[torch.nn.Module, RowDelta] = weakref.WeakKeyDictionary()


def row_delta_class(base_cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    """A subclass of ``base_cls`` whose forward adds the module's row delta to selected rows.

    Subclassing (rather than wrapping) keeps the module's own weight handling (ComfyUI's
    casting, low-VRAM weight functions, weight patches by module path) working unchanged.
    """
    cls = _ROW_CLASSES.get(base_cls)
    if cls is None:

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            out = base_cls.forward(self, x, *args, **kwargs)
            delta = _ROW_DELTAS.get(self)
            return out if delta is None else delta.apply(self, x, out)

        cls = type(f"LayerFusionRows{base_cls.__name__}", (base_cls,), {"forward": forward})
        _ROW_CLASSES[base_cls] = cls
    return cls


def make_row_delta_module(base: torch.nn.Module, delta: RowDelta) -> torch.nn.Module:
    """``base`` seen through a subclass whose forward adds ``delta`` to selected rows.

    The new module shares ``base``'s instance state (its ``__dict__``: parameters, buffers
    and every attribute the host keeps on it), so whatever the host records on the module
    while it is swapped in (weight patches applied, cast flags, low-VRAM functions) is true
    of ``base`` once it is swapped back: the two are one module with two forwards. The delta
    is held beside it, not on it, so ``base`` itself never sees it.
    """
    cls = row_delta_class(type(base))
    module = cls.__new__(cls)
    object.__setattr__(module, "__dict__", base.__dict__)
    _ROW_DELTAS[module] = delta
    return module
