"""Every option of the method (METHOD.md), as frozen dataclasses and Enums with defaults.

PAPER choices are defaults; our reconstructions (OURS) are named options so they can be
changed without touching the hot path. Values are plain strings/numbers so a node can
build them from widgets and a saved workflow reloads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

BlockKey = tuple[str, int, int]
"""ComfyUI's transformer-block key: (block name, block id, index inside the SpatialTransformer)."""


class SparsityFormula(str, Enum):
    """Per-token sparsity score of the head-mean self-attention row m_i (high = sparse)."""

    SUM_OF_SQUARES = "sum_of_squares"  # s_i = sum_j m_ij^2 (OURS default)
    NEGATIVE_ENTROPY = "negative_entropy"  # s_i = sum_j m_ij log m_ij


class PriorOrientation(str, Enum):
    """Which rows of the self-attention map count as foreground (METHOD.md, priors 1)."""

    DENSE = "dense"  # the paper: dense rows are the object
    SPARSE = "sparse"
    AUTO = "auto"  # decided once per run by correlation with the content prior


class PriorTiming(str, Enum):
    """When the FG priors are taken."""

    PRIOR_PASS = "prior_pass"  # an extra FG-only conditional forward per evaluation
    PREVIOUS = "previous"  # reuse the previous evaluation's maps; the first runs a prior pass
    PREVIOUS_ONLY = "previous_only"  # the same, with no prior pass: the first evaluation does not blend

    @property
    def reuses_previous(self) -> bool:
        return self in (PriorTiming.PREVIOUS, PriorTiming.PREVIOUS_ONLY)


class ContentTiming(str, Enum):
    """Which content prior the self-attention blend of a block uses."""

    PRIOR_PASS = "prior_pass"  # this evaluation's prior pass (every block cached)
    PREVIOUS = "previous"  # the previous evaluation's map of that block


class BlendMode(str, Enum):
    GENERATIVE = "generative"  # Eq. 1 / Eq. 2 on attention outputs (the paper's method)
    ALPHA = "alpha"  # no attention blending; the blended image is FG RGBA over BG


class SharingMode(str, Enum):
    """Attention sharing between the BLENDED and BG streams (OURS, METHOD.md)."""

    MASKED = "masked"  # both see both; BG cannot see BLENDED keys inside the object
    BIDIRECTIONAL = "bidirectional"  # both see both, no suppression
    ONE_DIRECTIONAL = "one_directional"  # only BLENDED sees BG
    OFF = "off"


class WeightApplication(str, Enum):
    """How the LayerDiffuse FG delta reaches the FG rows."""

    ON_THE_FLY = "on_the_fly"  # x @ down^T @ up^T added for the FG rows (no extra weights)
    MERGED = "merged"  # a second, merged weight copy used for the FG rows


LAYER_GROUPS = ("input", "middle", "output")


def require_finite(name: str, value: object) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite real number.

    NaN passes any min/max check (every comparison with it is false), so every float
    option goes through this before its range is checked.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _coerce_enums(obj, **fields: type[Enum]) -> None:
    """Store enum members for fields given as plain strings (widget values, saved
    workflows) or as members of another copy of this module (compared by value)."""
    for name, enum in fields.items():
        object.__setattr__(obj, name, enum(getattr(obj, name)))


@dataclass(frozen=True)
class LayerSet:
    """Which transformer blocks blend (and share), and at which attention.

    ``spec`` is "all", or a comma-separated list of block groups ("input", "middle",
    "output") and/or single blocks written "output.5.1".
    """

    spec: str = "all"
    self_attention: bool = True
    cross_attention: bool = True

    def __post_init__(self) -> None:
        parse_layer_spec(self.spec)

    def contains(self, block: BlockKey) -> bool:
        groups, blocks = parse_layer_spec(self.spec)
        return block[0] in groups or tuple(block) in blocks


def parse_layer_spec(spec: str, name: str = "layers") -> tuple[frozenset[str], frozenset[BlockKey]]:
    """Parse a layer spec into (groups, single blocks). Raises ValueError naming the input
    ``name`` and the bad item."""
    if not isinstance(spec, str):
        raise ValueError(f"{name}: expected text, got {type(spec).__name__}")
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{name}: expected 'all' or block groups/keys, got an empty string")
    groups: set[str] = set()
    blocks: set[BlockKey] = set()
    for item in items:
        if item == "all":
            groups.update(LAYER_GROUPS)
        elif item in LAYER_GROUPS:
            groups.add(item)
        else:
            parts = item.split(".")
            if len(parts) != 3 or parts[0] not in LAYER_GROUPS or not all(p.isdigit() for p in parts[1:]):
                raise ValueError(
                    f"{name}: expected 'all', a group ({', '.join(LAYER_GROUPS)}) or a block "
                    f"like 'output.5.1', got {item!r}"
                )
            blocks.add((parts[0], int(parts[1]), int(parts[2])))
    return frozenset(groups), frozenset(blocks)


@dataclass(frozen=True)
class PriorOptions:
    """How the structure and content priors are extracted from the FG stream."""

    structure_layer: str = "last"  # "last" = the UNet's last self-attention; or "output.5.1"
    formula: SparsityFormula = SparsityFormula.SUM_OF_SQUARES
    orientation: PriorOrientation = PriorOrientation.DENSE
    timing: PriorTiming = PriorTiming.PRIOR_PASS
    content_timing: ContentTiming = ContentTiming.PRIOR_PASS
    auto_vote_evaluations: int = 1  # evaluations voting in AUTO; blending waits for the vote
    chunk_size: int = 1024  # query rows per chunk of the structure prior

    def __post_init__(self) -> None:
        _coerce_enums(
            self, formula=SparsityFormula, orientation=PriorOrientation, timing=PriorTiming,
            content_timing=ContentTiming,
        )  # fmt: skip
        if isinstance(self.structure_layer, str):  # "last " as typed in a widget is "last"
            object.__setattr__(self, "structure_layer", self.structure_layer.strip())
        if self.structure_layer != "last":
            groups, blocks = parse_layer_spec(self.structure_layer, "structure_layer")
            if len(blocks) != 1 or groups:
                raise ValueError(
                    f"structure_layer: expected 'last' or one block like 'output.5.1', got "
                    f"{self.structure_layer!r}"
                )
        if self.auto_vote_evaluations < 1:
            raise ValueError(f"auto_vote_evaluations: expected >= 1, got {self.auto_vote_evaluations}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class BlendOptions:
    """How the masks are built and where they blend (METHOD.md, masks and blending)."""

    coefficient: float = 10.0  # k of the hard mask (PAPER)
    threshold: float = 0.5  # tau of the hard mask (OURS)
    mode: BlendMode = BlendMode.GENERATIVE
    layers: LayerSet = field(default_factory=LayerSet)
    start_percent: float = 0.0  # sampling progress where blending/sharing starts
    end_percent: float = 1.0  # ... and ends (ComfyUI's percent convention)
    sharing: SharingMode = SharingMode.MASKED
    sharing_epsilon: float = 1e-6  # eps of the log(1 - M_hard + eps) key bias

    def __post_init__(self) -> None:
        _coerce_enums(self, mode=BlendMode, sharing=SharingMode)
        for name in ("coefficient", "threshold", "start_percent", "end_percent", "sharing_epsilon"):
            require_finite(name, getattr(self, name))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: expected 0 <= threshold <= 1, got {self.threshold}")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                "start_percent/end_percent: expected 0 <= start <= end <= 1, got "
                f"{self.start_percent}, {self.end_percent}"
            )
        if self.coefficient <= 0:
            raise ValueError(f"coefficient: expected > 0, got {self.coefficient}")
        if self.sharing_epsilon <= 0:
            raise ValueError(f"sharing_epsilon: expected > 0, got {self.sharing_epsilon}")


@dataclass(frozen=True)
class NoiseOptions:
    """Noise shared by the streams of one image (OURS)."""

    share_initial_noise: bool = True
    share_step_noise: bool = True  # ancestral/SDE samplers


@dataclass(frozen=True)
class LayoutOptions:
    """How K layers are laid out (LAYERS.md 1, OURS); percents as ComfyUI's."""

    # FG_k (k >= 1) draws its noise from seed + k, since one noise for every layer stacks the
    # objects in one place; FG_0, BG and BLENDED use the seed itself.
    per_layer_noise: bool = True

    # Until here FG_k's cross-attention uses its prompt inside its region and the empty prompt
    # outside (an attention couple in FG_k's rows), so the object is drawn inside the box.
    couple_end_percent: float = 0.30
    paste_end_percent: float = 0.15  # until here BLENDED's latent is pasted into FG_k inside its region

    # Every stream's state at this percent is kept in the layer bundle: a later re-harmonise
    # (LAYERS.md 2) re-noises the moved layers with the noise it implies.
    keep_percent: float = 0.40

    def __post_init__(self) -> None:
        for name in ("couple_end_percent", "paste_end_percent", "keep_percent"):
            value = require_finite(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected 0 <= value <= 1, got {value}")


class ReharmonizePreset(str, Enum):
    """Named (start, end) percents of a re-harmonise (LAYERS.md 2.5)."""

    DEFAULT = "default"  # 0.40 / 0.60
    STRONGER_SHADOWS = "stronger_shadows"  # 0.30 / 0.50
    CONSERVATIVE = "conservative"  # 0.50 / 0.70
    CUSTOM = "custom"  # the given percents


REHARMONIZE_WINDOWS: dict[ReharmonizePreset, tuple[float, float]] = {
    ReharmonizePreset.DEFAULT: (0.40, 0.60),
    ReharmonizePreset.STRONGER_SHADOWS: (0.30, 0.50),
    ReharmonizePreset.CONSERVATIVE: (0.50, 0.70),
}


@dataclass(frozen=True)
class ReharmonizeOptions:
    """A re-harmonise (LAYERS.md 2): BLENDED re-denoised from ``start_percent``, the moved
    layers' regions pinned until ``end_percent``; percents as ComfyUI's."""

    start_percent: float = 0.40
    end_percent: float = 0.60
    lock_foreground: bool = True  # the moved layers' pixels composited over the result
    effects_threshold: float = 0.02  # differences up to this (0..1) stay out of the effects layer

    def __post_init__(self) -> None:
        for name in ("start_percent", "end_percent", "effects_threshold"):
            require_finite(name, getattr(self, name))
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                "p_start/p_end: expected 0 <= p_start <= p_end <= 1, got "
                f"{self.start_percent}, {self.end_percent}"
            )
        if not 0.0 <= self.effects_threshold <= 1.0:
            raise ValueError(f"effects_threshold: expected 0 <= value <= 1, got {self.effects_threshold}")

    @classmethod
    def from_preset(
        cls,
        preset: ReharmonizePreset | str,
        start_percent: float,
        end_percent: float,
        lock_foreground: bool = True,
        effects_threshold: float = 0.02,
    ) -> ReharmonizeOptions:
        """The preset's window, or with CUSTOM the given one."""
        try:
            preset = ReharmonizePreset(preset)
        except ValueError:
            names = ", ".join(p.value for p in ReharmonizePreset)
            raise ValueError(f"preset: expected one of {names}, got {preset!r}") from None
        start, end = REHARMONIZE_WINDOWS.get(preset, (start_percent, end_percent))
        return cls(start, end, lock_foreground, effects_threshold)


@dataclass(frozen=True)
class LayerFusionOptions:
    prior: PriorOptions = field(default_factory=PriorOptions)
    blend: BlendOptions = field(default_factory=BlendOptions)
    noise: NoiseOptions = field(default_factory=NoiseOptions)
    layout: LayoutOptions = field(default_factory=LayoutOptions)
