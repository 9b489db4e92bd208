"""Where a moved layer goes (LAYERS.md 2): a ``Placement`` of a canvas-size layer image, and
that placement applied to the layer's pixels, its masks and its latent.

A placement is ComfyUI core's LAYERS item geometry for an item whose image is the whole
canvas (what our LAYERS document holds): the image is flipped (``flip_h``, ``flip_v``),
resized to ``width`` x ``height`` and put with its top-left corner at (``x``, ``y``). Pure
torch; images are ``[N, H, W, C]`` (straight RGBA or a mask as one channel), latents
``[N, C, h, w]`` with one cell per 8 x 8 pixels.

- Pixels: a placement with the canvas size is a permutation of whole pixels (exact); a
  resized one resamples premultiplied colour.
- Latents: a placement that keeps the size and moves by whole cells is a permutation of whole
  cells (``place_latent_cells``), exact on noisy latents too; any other is a bilinear
  resampling (``place_latent_resampled``), only meaningful on a clean latent, which is then
  re-noised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..formats import ALPHA, LATENT_CELL, RGB
from .compositing import premultiply


@dataclass(frozen=True)
class Placement:
    x: int
    y: int
    width: int
    height: int
    flip_h: bool = False
    flip_v: bool = False

    @classmethod
    def identity(cls, canvas_width: int, canvas_height: int) -> Placement:
        return cls(0, 0, canvas_width, canvas_height)

    def keeps_size(self, canvas_width: int, canvas_height: int) -> bool:
        return (self.width, self.height) == (canvas_width, canvas_height)

    def on_cells(self, canvas_width: int, canvas_height: int) -> bool:
        """A permutation of whole latent cells: the canvas size, moved by whole cells."""
        return (
            self.keeps_size(canvas_width, canvas_height)
            and self.x % LATENT_CELL == 0
            and self.y % LATENT_CELL == 0
        )

    def is_identity(self, canvas_width: int, canvas_height: int) -> bool:
        return self == Placement.identity(canvas_width, canvas_height)


VISIBLE_ALPHA = 0.05  # a decoded layer's faint stray pixels are not its visible part


def alpha_box(alpha: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end exclusive, of the pixels of ``alpha`` [H, W] above
    ``VISIBLE_ALPHA``; None when the layer has none."""
    ys = torch.nonzero(alpha.amax(dim=1) > VISIBLE_ALPHA).flatten()
    xs = torch.nonzero(alpha.amax(dim=0) > VISIBLE_ALPHA).flatten()
    if ys.numel() == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def placement_from_move(
    alpha: torch.Tensor, dx: int, dy: int, scale: float, flip_h: bool, flip_v: bool
) -> Placement:
    """The placement of a layer whose visible part (``alpha_box``; the whole canvas when it has
    none) is flipped and scaled about its own centre, then moved by (dx, dy) pixels. When the
    result can be a permutation of whole latent cells (no scale, a move by whole cells) a flip
    keeps the part in place to the nearest cell, so it stays exact; otherwise positions are
    rounded to whole pixels."""
    height, width = alpha.shape
    x0, y0, x1, y1 = alpha_box(alpha) or (0, 0, width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = new_w / width, new_h / height
    on_cells = (new_w, new_h) == (width, height) and dx % LATENT_CELL == 0 and dy % LATENT_CELL == 0

    def origin(lo: int, hi: int, size: int, s: float, flip: bool) -> float:
        if flip:  # the flipped canvas shows the part at [size - hi, size - lo): bring it back
            shift = lo + hi - size
            if on_cells:
                shift = LATENT_CELL * round(shift / LATENT_CELL)
            lo, hi = size - hi, size - lo
            centre = (lo + hi) / 2 + shift
            return centre - s * (lo + hi) / 2
        return (lo + hi) / 2 * (1 - s)

    ox = origin(x0, x1, width, sx, flip_h) + dx
    oy = origin(y0, y1, height, sy, flip_v) + dy
    return Placement(round(ox), round(oy), new_w, new_h, bool(flip_h), bool(flip_v))


def check_on_canvas(placement: Placement, alpha: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` when the placed layer's visible part (or, for an empty layer,
    its whole image) lies fully off the canvas."""
    height, width = alpha.shape
    x0, y0, x1, y1 = alpha_box(alpha) or (0, 0, width, height)
    sx, sy = placement.width / width, placement.height / height
    if placement.flip_h:
        x0, x1 = width - x1, width - x0
    if placement.flip_v:
        y0, y1 = height - y1, height - y0
    left, right = placement.x + x0 * sx, placement.x + x1 * sx
    top, bottom = placement.y + y0 * sy, placement.y + y1 * sy
    if right <= 0 or bottom <= 0 or left >= width or top >= height:
        raise ValueError(
            f"{name}: the layer would lie fully off the {width}x{height} canvas (its visible part at "
            f"x {left:.0f}..{right:.0f}, y {top:.0f}..{bottom:.0f}); move it less far"
        )


def _flip(t: torch.Tensor, placement: Placement, h_dim: int, w_dim: int) -> torch.Tensor:
    dims = [d for d, flip in ((w_dim, placement.flip_h), (h_dim, placement.flip_v)) if flip]
    return torch.flip(t, dims) if dims else t


def _paste(source: torch.Tensor, x: int, y: int, out: torch.Tensor) -> torch.Tensor:
    """``source`` [N, h, w, C] put into ``out`` [N, H, W, C] at (x, y), cropped to it."""
    height, width = out.shape[1:3]
    h, w = source.shape[1:3]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + h, height), min(x + w, width)
    if bottom > top and right > left:
        out[:, top:bottom, left:right] = source[:, top - y : bottom - y, left - x : right - x]
    return out


def place_image(image: torch.Tensor, placement: Placement) -> torch.Tensor:
    """``image`` [N, H, W, C] (straight RGBA, or channels without alpha such as a mask
    [N, H, W, 1]) placed on an empty canvas of its size: transparent (or 0) where nothing
    lands. At the canvas size this is a pixel permutation (values copied, never resampled);
    a resize is bilinear on premultiplied colour, antialiased when it shrinks."""
    height, width = image.shape[1:3]
    placed = _flip(image, placement, 1, 2)
    if not placement.keeps_size(width, height):
        rgba = image.shape[-1] == RGB + 1
        source = premultiply(placed.float().clamp(0, 1)) if rgba else placed.float()
        shrink = placement.width < width or placement.height < height
        resized = F.interpolate(
            source.movedim(-1, 1),
            size=(placement.height, placement.width),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        ).movedim(1, -1)
        if rgba:
            alpha = resized[..., ALPHA:].clamp(0, 1)
            colour = torch.minimum(resized[..., :RGB].clamp_min(0), alpha)
            straight = torch.where(alpha > 0, colour / alpha.clamp_min(1e-12), torch.zeros_like(colour))
            resized = torch.cat((straight.clamp(0, 1), alpha), dim=-1)
        placed = resized.to(image.dtype)
    return _paste(placed, placement.x, placement.y, torch.zeros_like(image))


def place_mask(mask: torch.Tensor, placement: Placement) -> torch.Tensor:
    """A MASK batch [N, H, W] placed like its layer (0 where nothing lands)."""
    return place_image(mask.unsqueeze(-1), placement)[..., 0]


def place_latent_cells(latent: torch.Tensor, placement: Placement, fill: torch.Tensor) -> torch.Tensor:
    """``latent`` [N, C, h, w] flipped and moved by whole cells (``placement.on_cells``);
    cells nothing lands on take ``fill``'s (same shape). Exact: every cell is a copy."""
    height, width = latent.shape[-2] * LATENT_CELL, latent.shape[-1] * LATENT_CELL
    if not placement.on_cells(width, height):
        raise ValueError(f"place_latent_cells: {placement} is not a move by whole latent cells")
    flipped = _flip(latent, placement, 2, 3).movedim(1, -1)  # [N, h, w, C]
    out = _paste(flipped, placement.x // LATENT_CELL, placement.y // LATENT_CELL, fill.movedim(1, -1).clone())
    return out.movedim(-1, 1)


def place_latent_resampled(latent: torch.Tensor, placement: Placement) -> torch.Tensor:
    """``latent`` [N, C, h, w] (a clean one) under any placement, bilinear at each cell's
    centre; cells mapped outside the source take its nearest border cell."""
    n, _, h, w = latent.shape
    width, height = w * LATENT_CELL, h * LATENT_CELL
    flipped = _flip(latent, placement, 2, 3)
    sx, sy = placement.width / width, placement.height / height
    centres_x = (torch.arange(w, dtype=torch.float64) + 0.5) * LATENT_CELL
    centres_y = (torch.arange(h, dtype=torch.float64) + 0.5) * LATENT_CELL
    # The source pixel each cell centre comes from, as grid_sample's [-1, 1] (pixel edges).
    gx = ((centres_x - placement.x) / sx) / width * 2 - 1
    gy = ((centres_y - placement.y) / sy) / height * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).to(latent.dtype)
    grid = grid.to(latent.device).expand(n, h, w, 2)
    return F.grid_sample(flipped, grid, mode="bilinear", padding_mode="border", align_corners=False)


def alpha_at_latent(alpha: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Alpha [N, H, W] -> [N, 1, h, w] at latent size (area resampling), in 0..1."""
    return F.interpolate(alpha.float().unsqueeze(1), size=tuple(latent_hw), mode="area").clamp(0, 1)


def scale_of(value: float, name: str) -> float:
    """A finite scale > 0; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name}: expected a finite scale > 0, got {value!r}")
    return float(value)
