"""Applying a FG weight delta to selected batch rows only.

Each attention projection of the model is swapped (on a clone) for a subclass instance of
its own class whose forward hands its base forward to a ``RowDelta``:
- on the fly: the base output for every row, plus the rank-r delta on the FG rows;
- merged: the FG rows through a merged weight copy (``merged_weights``), the other rows
  through the base forward, each row computed once.
Both work on runs of consecutive rows (views, no gathers). The other rows never see the
delta. On the fly they are the base forward's own rows; merged, they come from the base
forward of each run of other rows, which equals the full batch's rows as long as a GEMM's
result for a row does not depend on how many rows it runs with (it does not for float32 on
MKL/oneDNN CPUs; tests check it).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..options import WeightApplication
from .fg_weights import LoraFactors, Offset
from .merged_weights import MergedWeightCache, WeightGetter

BaseForward = Callable[[torch.Tensor], torch.Tensor]


class RowSelection:
    """Which rows of the current call get the FG delta; set per UNet call by the host.

    ``indices`` is None when no row is selected (the module then behaves like its base);
    ``positions`` the same rows as Python ints when the host knows them (so the row runs are
    found without reading the index tensor back from the device).
    ``weights_id`` names the model's base weights for the merged copies (see
    ``merged_weights``); ``merge_allowed`` is False while the host may change weights inside
    a run (the merged path then falls back to the on-the-fly delta, right for any weights).
    """

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None
        self.positions: tuple[int, ...] | None = None
        self.weights_id: object | None = None
        self.merge_allowed = True
        self._memo: tuple | None = None  # (indices, batch, runs) of the last lookup
        self._runs: dict[tuple, tuple[tuple[int, int, bool], ...]] = {}

    def __deepcopy__(self, memo: dict) -> RowSelection:
        return self

    def segments(self, batch: int) -> tuple[tuple[int, int, bool], ...]:
        """The rows of a ``batch``-row call as runs (start, stop, selected), in row order.

        Runs are slices of dim 0, i.e. views: the row paths run their GEMMs on them without
        gathering rows (a gather costs as much memory traffic as the delta saves). Computed
        once per selection, not per projection."""
        indices = self.indices
        memo = self._memo
        if memo is not None and memo[0] is indices and memo[1] == batch:
            return memo[2]
        positions = self.positions if self.positions is not None else tuple(indices.tolist())
        key = (positions, batch)
        runs = self._runs.get(key)
        if runs is None:
            chosen = set(key[0])
            flags = [i in chosen for i in range(batch)]
            starts = [i for i in range(batch) if i == 0 or flags[i] != flags[i - 1]]
            runs = self._runs[key] = tuple(
                (start, stop, flags[start]) for start, stop in zip(starts, [*starts[1:], batch], strict=True)
            )
        self._memo = (indices, batch, runs)
        return runs


@contextlib.contextmanager
def plain_weight(
    module: torch.nn.Module, x: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The module's weight and bias on x's device and dtype (a ``WeightGetter``)."""
    bias = module.bias.to(x) if module.bias is not None else None
    yield module.weight.to(x), bias


class RowDelta:
    """The FG delta of one projection, applied to the selected rows of its output."""

    def __init__(
        self,
        delta: LoraFactors | Offset,
        strength: float,
        application: WeightApplication,
        selection: RowSelection,
        weight_getter: WeightGetter = plain_weight,
        path: str = "",
        merged: MergedWeightCache | None = None,
    ) -> None:
        self.delta = delta
        self.strength = strength
        self.application = WeightApplication(application)
        self.selection = selection
        self.weight_getter = weight_getter
        self.path = path  # the projection's key in ``merged``
        self.merged = MergedWeightCache() if merged is None else merged
        self._cache: dict[tuple, torch.Tensor] = {}

    def _factors(
        self, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]:
        """(first, second, bias, alpha) on like's device and dtype, as right-hand GEMM operands:
        the delta of rows [M, in] is alpha * (rows @ first) @ second for a LoRA, alpha * (rows @
        first + bias) for an offset. The stored tensors themselves where their device and dtype
        already match (the FG weights loaded by ComfyUI next to the UNet): no second copy;
        else one copy per run. The strength and a LoRA's alpha scale go in as the GEMMs' alpha."""
        key = (like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            first, second, bias, alpha = self.delta.operands(self.strength)
            on_device = lambda t: None if t is None else t.to(device=like.device, dtype=like.dtype)  # noqa: E731
            cached = self._cache[key] = (on_device(first), on_device(second), on_device(bias), alpha)
        return cached

    def forward(self, module: torch.nn.Module, x: torch.Tensor, base_forward: BaseForward) -> torch.Tensor:
        """The projection of x [B, ..., in]: ``base_forward`` (the module's own forward of
        some rows of x) for the unselected rows, with the FG delta for the selected ones."""
        selection = self.selection
        rows = selection.indices
        if rows is None or rows.numel() == 0 or self.strength == 0:
            return base_forward(x)
        if self.application == WeightApplication.MERGED and selection.merge_allowed:
            return self._merged(module, x, base_forward)
        return self.apply(module, x, base_forward(x))

    def _merged(self, module: torch.nn.Module, x: torch.Tensor, base_forward: BaseForward) -> torch.Tensor:
        selection = self.selection
        weight, bias = self.merged.lookup(
            self.path, module, x, self.delta, self.strength, selection.weights_id, self.weight_getter
        )
        runs = selection.segments(x.shape[0])
        if len(runs) == 1 and runs[0][2]:  # every row is FG (a prior pass)
            return F.linear(x, weight, bias)
        out = None
        for a, b, fg in runs:  # the other rows first: their dtype is the output's
            if not fg:
                rest = base_forward(x[a:b])
                if out is None:
                    out = rest.new_empty((x.shape[0], *rest.shape[1:]))
                out[a:b] = rest
        in_place = not (out.requires_grad or x.requires_grad or weight.requires_grad) and out.dtype == x.dtype
        for a, b, fg in runs:  # FG rows written straight into the output, no temporary
            if not fg:
                continue
            if not in_place:
                out[a:b] = F.linear(x[a:b], weight, bias).to(out.dtype)
                continue
            rows2d, dest = x[a:b].reshape(-1, x.shape[-1]), out[a:b].view(-1, out.shape[-1])
            if bias is None:
                torch.mm(rows2d, weight.t(), out=dest)
            else:
                torch.addmm(bias, rows2d, weight.t(), out=dest)
        return out

    def apply(self, module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` = base(x) for all rows (the base forward's fresh result); returns it with
        the rank-r (or offset) delta accumulated in place into each run of selected rows
        (one GEMM writes into ``out``: no gather, no extra output copy)."""
        rows = self.selection.indices
        if rows is None or rows.numel() == 0 or self.strength == 0:
            return out
        first, second, bias, alpha = self._factors(x)
        fused = out.is_contiguous() and out.dtype == x.dtype
        for a, b, fg in self.selection.segments(x.shape[0]):
            if not fg:
                continue
            rows2d = x[a:b].reshape(-1, x.shape[-1])
            target = out[a:b].view(-1, out.shape[-1]) if fused else torch.zeros_like(out[a:b], dtype=x.dtype)
            target = target.view(-1, out.shape[-1])
            if second is None:
                target.addmm_(rows2d, first, alpha=alpha)
            else:
                target.addmm_(torch.mm(rows2d, first), second, alpha=alpha)
            if bias is not None:
                target.add_(bias, alpha=alpha)
            if not fused:
                out[a:b] += target.view(out[a:b].shape).to(out.dtype)
        return out

    def release(self) -> None:
        """Drop the per-run device copies of the delta (end of a sampling run). The merged
        copies stay in ``merged`` for the next run; ``merged.release()`` frees them."""
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
            delta = _ROW_DELTAS.get(self)
            if delta is None:
                return base_cls.forward(self, x, *args, **kwargs)
            return delta.forward(self, x, lambda rows: base_cls.forward(self, rows, *args, **kwargs))

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
