"""Per-run bookkeeping of the priors: the evaluation counter, whether the evaluation lies
inside the blending window, and the maps recorded in this evaluation and the previous one,
keyed by FG stream (and by block for the content prior). Reset at the start of every
sampling run, never by counting calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..options import BlockKey
from .streams import Stream


@dataclass
class Maps:
    """Maps recorded in one evaluation, per image ([N, T] each): the normalised sparsity at
    the structure layer of each FG stream, and the content prior of each (FG stream, block)."""

    sparsity: dict[Stream, torch.Tensor] = field(default_factory=dict)
    sparsity_grid: tuple[int, int] | None = None
    content: dict[tuple[Stream, BlockKey], torch.Tensor] = field(default_factory=dict)
    content_grid: dict[BlockKey, tuple[int, int]] = field(default_factory=dict)

    @property
    def has_structure(self) -> bool:
        return bool(self.sparsity)


class PriorRecorder:
    """What the hooks recorded, evaluation by evaluation, in one sampling run."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start of a sampling run: forget every map."""
        self.evaluation = -1
        self.active = False  # the blending/sharing window contains this evaluation
        self.coupled = False  # the layers' attention couple applies in this evaluation
        self.recording = Maps()
        self.previous: Maps | None = None

    def begin_evaluation(self, active: bool, coupled: bool = False) -> None:
        """Start of one model evaluation; ``active`` = inside the blending window, ``coupled``
        = inside the layers' attention-couple window."""
        if self.recording.has_structure:
            self.previous = self.recording
        self.recording = Maps()
        self.evaluation += 1
        self.active = active
        self.coupled = coupled

    def record_sparsity(self, stream: Stream, sparsity: torch.Tensor, grid: tuple[int, int]) -> None:
        self.recording.sparsity[stream] = sparsity
        self.recording.sparsity_grid = tuple(grid)

    def record_content(
        self, stream: Stream, block: BlockKey, content: torch.Tensor, grid: tuple[int, int]
    ) -> None:
        self.recording.content[(stream, block)] = content
        self.recording.content_grid[block] = tuple(grid)

    @property
    def latest(self) -> Maps | None:
        """This evaluation's maps once they hold a structure prior, else the previous ones."""
        return self.recording if self.recording.has_structure else self.previous
