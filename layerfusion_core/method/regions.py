"""A layer's region (box or mask, [H, W] at image size) at an attention layer's token grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_at_grid(region: torch.Tensor, grid: tuple[int, int], feather: bool = True) -> torch.Tensor:
    """[H, W] region -> [h * w] at ``grid`` (area resampling), in 0..1; ``feather``: over one
    cell of that grid (a 3x3 mean), so zero only farther than one cell outside the region."""
    h, w = grid
    small = F.interpolate(region.float()[None, None], size=(h, w), mode="area")
    if feather:
        small = F.avg_pool2d(small, 3, stride=1, padding=1, count_include_pad=False)
    return small.reshape(h * w).clamp(0, 1)
