"""LayerDiffuse foreground weights: parse and validate.

Two file formats (LAYERDIFFUSE.md):
- ``layer_xl_transparent_attn``: a LoRA, ``diffusion_model.<ldm path>.weight::lora::0/1``
  (up [out, r], down [r, in]; order detected by shape), optional ``::lora::2`` alpha.
- ``ld_diffusers_sdxl_attn``: full additive offsets under diffusers names
  (``<diffusers path>.weight``, optional ``.bias`` of ``to_out.0``).
Both are validated against a ``UNetLayout`` (``sdxl.SDXL`` for users' files); ``fg_rows``
applies them to the FG rows of a batch only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..architectures.sdxl import SDXL, Projection, UNetLayout
from ..options import WeightApplication, require_finite
from .merged_weights import MergedWeightCache

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
    bias = None  # a LoRA never offsets the bias

    def dense(self) -> torch.Tensor:
        return self.scale * (self.up.float() @ self.down.float())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.up.shape[0], self.down.shape[1])

    def row_delta(
        self, x: torch.Tensor, on_device: Callable[[str, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """x [R, ..., in] -> the delta of its outputs, x · downᵀ · upᵀ · scale (rank-r path)."""
        return F.linear(F.linear(x, on_device("down", self.down)), on_device("up", self.up)) * self.scale

    def operands(
        self, strength: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]:
        """(first [in, r], second [r, out], bias None, alpha): views of the stored factors (no
        copy); the delta of rows [M, in] is alpha * (rows @ first) @ second."""
        return self.down.t(), self.up.t(), None, self.scale * strength


@dataclass
class Offset:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None = None  # [out]

    def dense(self) -> torch.Tensor:
        return self.weight.float()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def row_delta(
        self, x: torch.Tensor, on_device: Callable[[str, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """x [R, ..., in] -> x · offsetᵀ + bias offset."""
        bias = None if self.bias is None else on_device("bias", self.bias)
        return F.linear(x, on_device("weight", self.weight), bias)

    def operands(
        self, strength: float
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]:
        """(first [in, out], None, bias [out] or None, alpha): views of the stored offsets (no
        copy); the delta of rows is alpha * (rows @ first + bias)."""
        return self.weight.t(), None, self.bias, strength


@dataclass
class ForegroundWeights:
    """Validated per-projection deltas, keyed by ComfyUI module path under diffusion_model."""

    layout_name: str
    file_format: str  # "lora" | "offsets"
    deltas: dict[str, LoraFactors | Offset]
    strength: float = 1.0
    application: WeightApplication = WeightApplication.ON_THE_FLY
    source: str = ""
    host_state: dict = field(default_factory=dict, repr=False, compare=False)
    """Shared by every view of these tensors: the host adapter keeps its handle on them here."""
    # Merged copies for WeightApplication.MERGED, kept across runs; shared by every view.
    merged: MergedWeightCache = field(default_factory=MergedWeightCache, repr=False, compare=False)

    def with_settings(self, strength: float, application: WeightApplication) -> ForegroundWeights:
        """A view with another strength/application (tensors and merged copies are shared)."""
        return ForegroundWeights(
            self.layout_name,
            self.file_format,
            self.deltas,
            require_finite("strength", strength),
            WeightApplication(application),
            self.source,
            self.host_state,
            self.merged,
        )

    @property
    def num_bytes(self) -> int:
        """Bytes held by the deltas' tensors."""
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
            shape = delta.shape
            if shape != proj.shape:
                problems.append(f"{path}: weights are {list(shape)}, the model has {list(proj.shape)}")
        if problems:
            raise ForegroundWeightsError(
                f"foreground weights ({self.layout_name}{', ' + self.source if self.source else ''}) do not "
                f"fit the model ({layout.name}): {len(problems)} mismatches, e.g. "
                + "; ".join(problems[:_MAX_NAMED])
            )


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
