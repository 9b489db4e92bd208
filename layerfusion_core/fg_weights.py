"""LayerDiffuse foreground weights: parse, validate, and apply to selected batch rows only.

Two file formats (LAYERDIFFUSE.md):
- ``layer_xl_transparent_attn``: a LoRA, ``diffusion_model.<ldm path>.weight::lora::0/1``
  (up [out, r], down [r, in]; order detected by shape), optional ``::lora::2`` alpha.
- ``ld_diffusers_sdxl_attn``: full additive offsets under diffusers names
  (``<diffusers path>.weight``, optional ``.bias`` of ``to_out.0``).
Both are validated against a ``UNetLayout`` (``sdxl.SDXL`` for users' files). The delta
reaches only the rows selected by a ``RowSelection`` (see ``RowDeltaLinear``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .options import WeightApplication
from .sdxl import SDXL, Projection, UNetLayout

log = logging.getLogger(__name__)

LORA_KEY = re.compile(r"^diffusion_model\.(?P<path>.+)\.weight::lora::(?P<slot>\d+)$")
OFFSET_KEY = re.compile(r"^(?P<path>.+)\.(?P<kind>weight|bias)$")
_MAX_NAMED = 8


class ForegroundWeightsError(ValueError):
    """A foreground-weights file that does not fit the expected UNet layout."""


@dataclass
class LoraFactors:
    up: torch.Tensor  # [out, r]
    down: torch.Tensor  # [r, in]
    scale: float = 1.0  # alpha / rank when the file carries an alpha

    def dense(self) -> torch.Tensor:
        return self.scale * (self.up.float() @ self.down.float())


@dataclass
class Offset:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None = None  # [out]

    def dense(self) -> torch.Tensor:
        return self.weight.float()


@dataclass
class ForegroundWeights:
    """Validated per-projection deltas, keyed by ComfyUI module path under diffusion_model."""

    layout_name: str
    file_format: str  # "lora" | "offsets"
    deltas: dict[str, LoraFactors | Offset]
    strength: float = 1.0
    application: WeightApplication = WeightApplication.ON_THE_FLY
    source: str = ""
    _device_cache: dict = field(default_factory=dict, repr=False)

    def with_settings(self, strength: float, application: WeightApplication) -> ForegroundWeights:
        """A view with another strength/application (the tensors are shared, not copied)."""
        return ForegroundWeights(
            self.layout_name,
            self.file_format,
            self.deltas,
            strength,
            WeightApplication(application),
            self.source,
        )

    @property
    def num_bytes(self) -> int:
        total = 0
        for d in self.deltas.values():
            for t in vars(d).values():
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def check_fits(self, layout: UNetLayout) -> None:
        """Raise ForegroundWeightsError unless every delta matches a projection of ``layout``."""
        problems = []
        for path, delta in self.deltas.items():
            proj = layout.by_ldm_path.get(path)
            if proj is None:
                problems.append(f"{path}: no such attention projection in {layout.name}")
                continue
            shape = _delta_shape(delta)
            if shape != proj.shape:
                problems.append(f"{path}: weights are {list(shape)}, the model has {list(proj.shape)}")
        if problems:
            raise ForegroundWeightsError(
                f"foreground weights ({self.layout_name}{', ' + self.source if self.source else ''}) do not "
                f"fit the model ({layout.name}): {len(problems)} mismatches, e.g. "
                + "; ".join(problems[:_MAX_NAMED])
            )


def _delta_shape(delta: LoraFactors | Offset) -> tuple[int, int]:
    if isinstance(delta, LoraFactors):
        return (delta.up.shape[0], delta.down.shape[1])
    return tuple(delta.weight.shape)


def parse_foreground_weights(
    state_dict: Mapping[str, torch.Tensor],
    layout: UNetLayout = SDXL,
    source: str = "",
) -> ForegroundWeights:
    """Detect the format and validate every key and shape. Unknown or mis-shaped keys are
    refused with their names; projections the file does not cover get no delta."""
    keys = list(state_dict)
    if not keys:
        raise ForegroundWeightsError(f"foreground weights {source!r}: the file holds no tensors")
    lora_keys = [k for k in keys if "::lora::" in k]
    if lora_keys:
        weights = _parse_lora(state_dict, layout)
        file_format = "lora"
    else:
        weights = _parse_offsets(state_dict, layout)
        file_format = "offsets"
    covered = len(weights)
    if covered < len(layout.projections):
        log.warning(
            "LayerFusion: foreground weights %s cover %d of %d attention projections of %s",
            source or "(unnamed)",
            covered,
            len(layout.projections),
            layout.name,
        )
    return ForegroundWeights(layout.name, file_format, weights, source=source)


def _raise_problems(kind: str, unknown: list[str], misshaped: list[str]) -> None:
    parts = []
    if unknown:
        parts.append(f"{len(unknown)} unknown keys: " + ", ".join(unknown[:_MAX_NAMED]))
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped keys: " + "; ".join(misshaped[:_MAX_NAMED]))
    if parts:
        raise ForegroundWeightsError(f"foreground weights ({kind}): " + " | ".join(parts))


def _parse_lora(sd: Mapping[str, torch.Tensor], layout: UNetLayout) -> dict[str, LoraFactors]:
    slots: dict[str, dict[int, torch.Tensor]] = {}
    unknown, misshaped = [], []
    for key, tensor in sd.items():
        m = LORA_KEY.match(key)
        if not m or m["path"] not in layout.by_ldm_path or int(m["slot"]) > 2:
            unknown.append(key)
            continue
        slots.setdefault(m["path"], {})[int(m["slot"])] = tensor
    out: dict[str, LoraFactors] = {}
    for path, parts in slots.items():
        proj = layout.by_ldm_path[path]
        key = f"diffusion_model.{path}.weight::lora::"
        if 0 not in parts or 1 not in parts:
            misshaped.append(f"{key}0/1: both factors are needed, found slots {sorted(parts)}")
            continue
        up, down = _order_factors(parts[0], parts[1], proj)
        if up is None:
            misshaped.append(
                f"{key}0/1: {list(parts[0].shape)} and {list(parts[1].shape)} are not up [out, r] and "
                f"down [r, in] for a {list(proj.shape)} weight"
            )
            continue
        scale = 1.0
        if 2 in parts:
            alpha = parts[2]
            if alpha.numel() != 1:
                misshaped.append(f"{key}2: alpha must be a scalar, got {list(alpha.shape)}")
                continue
            scale = float(alpha.item()) / up.shape[1]
        out[path] = LoraFactors(up, down, scale)
    _raise_problems("LoRA", unknown, misshaped)
    return out


def _order_factors(
    a: torch.Tensor, b: torch.Tensor, proj: Projection
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(up, down) from the two factors, whichever slot holds which; (None, None) if neither fits."""
    out_f, in_f = proj.shape

    def fits(up: torch.Tensor, down: torch.Tensor) -> bool:
        return (
            up.ndim == 2 and down.ndim == 2 and up.shape[0] == out_f and down.shape[1] == in_f
        ) and up.shape[1] == down.shape[0]

    if fits(a, b):
        return a, b
    if fits(b, a):
        return b, a
    return None, None


def _parse_offsets(sd: Mapping[str, torch.Tensor], layout: UNetLayout) -> dict[str, Offset]:
    unknown, misshaped = [], []
    weights: dict[str, torch.Tensor] = {}
    biases: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        m = OFFSET_KEY.match(key)
        proj = layout.by_diffusers_path.get(m["path"]) if m else None
        if proj is None or (m["kind"] == "bias" and proj.name != "to_out.0"):
            unknown.append(key)
            continue
        expected = proj.shape if m["kind"] == "weight" else proj.shape[:1]
        if tuple(tensor.shape) != tuple(expected):
            misshaped.append(f"{key}: expected {list(expected)}, got {list(tensor.shape)}")
            continue
        (weights if m["kind"] == "weight" else biases)[proj.ldm_path] = tensor
    orphan_bias = [p for p in biases if p not in weights]
    misshaped += [
        f"{layout.by_ldm_path[p].diffusers_path}.bias: no matching weight offset" for p in orphan_bias
    ]
    _raise_problems("diffusers offsets", unknown, misshaped)
    return {p: Offset(w, biases.get(p)) for p, w in weights.items()}


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
        if isinstance(self.delta, Offset) and self.delta.bias is not None:
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
        if self.application is WeightApplication.MERGED:
            weight, bias = self._merged_weight(module, x)
            return out.index_copy(0, rows, F.linear(x_rows, weight, bias))
        if isinstance(self.delta, LoraFactors):
            down = self._tensor("down", self.delta.down, x)
            up = self._tensor("up", self.delta.up, x)
            extra = F.linear(F.linear(x_rows, down), up) * (self.strength * self.delta.scale)
        else:
            weight = self._tensor("weight", self.delta.weight, x)
            bias = None if self.delta.bias is None else self._tensor("bias", self.delta.bias, x)
            extra = F.linear(x_rows, weight, bias) * self.strength
        return out.index_add(0, rows, extra.to(out.dtype))

    def release(self) -> None:
        """Drop device copies (end of a sampling run)."""
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
            out = base_cls.forward(self, x, *args, **kwargs)
            return self.layerfusion_delta.apply(self, x, out)

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
