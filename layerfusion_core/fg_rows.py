"""Applying a FG weight delta to selected batch rows only.

Each attention projection of the model is swapped (on a clone) for a subclass instance of
its own class whose forward hands its base forward to a ``RowDelta``:
- on the fly: the base output for every row, plus the rank-r delta on the FG rows;
- merged: the FG rows through a merged weight copy (``merged_weights``), the other rows
  through the base forward, each row computed once.
The other rows never see the delta. On the fly they are the base forward's own rows; merged,
they come from the base forward of those rows alone, which equals the full batch's rows as
long as the GEMM's result for a row does not depend on how many rows it runs with (it does
not for float32 on MKL/oneDNN CPUs; tests check it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .fg_weights import LoraFactors, Offset
from .merged_weights import MergedWeightCache, WeightGetter
from .options import WeightApplication

BaseForward = Callable[[torch.Tensor], torch.Tensor]


class RowSelection:
    """Which rows of the current call get the FG delta; set per UNet call by the host.

    ``indices`` is None when no row is selected (the module then behaves like its base).
    ``weights_id`` names the model's base weights for the merged copies (see
    ``merged_weights``); ``merge_allowed`` is False while the host may change weights inside
    a run (the merged path then falls back to the on-the-fly delta, right for any weights).
    """

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None
        self.weights_id: object | None = None
        self.merge_allowed = True
        self._memo: tuple | None = None  # (indices, batch, complement) of the last lookup
        self._complements: dict[tuple, torch.Tensor | None] = {}

    def __deepcopy__(self, memo: dict) -> RowSelection:
        return self

    def others(self, batch: int) -> torch.Tensor | None:
        """The unselected rows of a ``batch``-row call (on the indices' device), None when
        every row is selected. Computed once per selection, not per projection."""
        indices = self.indices
        memo = self._memo
        if memo is not None and memo[0] is indices and memo[1] == batch:
            return memo[2]
        key = (tuple(indices.tolist()), batch, indices.device)
        if key not in self._complements:
            rest = sorted(set(range(batch)) - set(key[0]))
            self._complements[key] = (
                torch.tensor(rest, dtype=torch.long, device=indices.device) if rest else None
            )
        self._memo = (indices, batch, self._complements[key])
        return self._memo[2]


def plain_weight(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight and bias on x's device and dtype."""
    bias = module.bias.to(x) if module.bias is not None else None
    return module.weight.to(x), bias


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

    def _tensor(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = t.to(device=like.device, dtype=like.dtype)
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
        others = selection.others(x.shape[0])
        if others is None:
            return F.linear(x, weight, bias)
        rest = base_forward(x.index_select(0, others))
        out = rest.new_empty((x.shape[0], *rest.shape[1:]))
        out.index_copy_(0, others, rest)
        fg = F.linear(x.index_select(0, selection.indices), weight, bias)
        return out.index_copy_(0, selection.indices, fg.to(out.dtype))

    def apply(self, module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` = base(x) for all rows; returns it with the rank-r (or offset) delta added
        to the selected rows."""
        rows = self.selection.indices
        if rows is None or rows.numel() == 0 or self.strength == 0:
            return out
        on_device = lambda name, t: self._tensor(name, t, x)  # noqa: E731
        if self.selection.others(x.shape[0]) is None:
            return out + (self.delta.row_delta(x, on_device) * self.strength).to(out.dtype)
        extra = self.delta.row_delta(x.index_select(0, rows), on_device) * self.strength
        return out.index_add(0, rows, extra.to(out.dtype))

    def release(self) -> None:
        """Drop the per-run device copies of the delta (end of a sampling run). The merged
        copies stay in ``merged`` for the next run; ``merged.release()`` frees them."""
        self._cache.clear()


_ROW_CLASSES: dict[type, type] = {}


def row_delta_class(base_cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    """A subclass of ``base_cls`` whose forward adds ``self.layerfusion_delta`` to selected rows.

    Subclassing (rather than wrapping) keeps the module's own weight handling (ComfyUI's
    casting, low-VRAM weight functions, weight patches by module path) working unchanged.
    """
    cls = _ROW_CLASSES.get(base_cls)
    if cls is None:

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return self.layerfusion_delta.forward(
                self, x, lambda rows: base_cls.forward(self, rows, *args, **kwargs)
            )

        cls = type(f"LayerFusionRows{base_cls.__name__}", (base_cls,), {"forward": forward})
        _ROW_CLASSES[base_cls] = cls
    return cls


def make_row_delta_module(base: torch.nn.Module, delta: RowDelta) -> torch.nn.Module:
    """A new module sharing ``base``'s parameters and buffers, adding ``delta`` to selected rows.

    ``base`` itself is left untouched (its parameter dicts are copied, not shared), so the
    caller's model is unchanged when the new module is swapped in on a clone.
    """
    module = row_delta_class(type(base)).__new__(row_delta_class(type(base)))
    module.__dict__.update(base.__dict__)
    module._parameters = dict(base._parameters)
    module._buffers = dict(base._buffers)
    module._modules = dict(base._modules)
    module.layerfusion_delta = delta
    return module
