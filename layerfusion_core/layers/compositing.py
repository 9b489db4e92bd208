"""Alpha compositing of a straight-alpha RGBA foreground over an RGB background, pure torch.

Images use ComfyUI's IMAGE layout, ``[B, H, W, C]`` float in 0..1. The foreground can be
scaled (with its alpha) and moved by a whole-pixel offset; the result keeps the
background's size. Scaling resamples premultiplied colour, so transparent pixels (whose
straight RGB is arbitrary) never bleed into the edge as dark or coloured fringes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..formats import ALPHA, RGB

RGBA = 4


def alpha_composite(
    foreground: Tensor,
    background: Tensor,
    x_offset: int = 0,
    y_offset: int = 0,
    scale: float = 1.0,
) -> Tensor:
    """Put ``foreground`` [B, h, w, 4] (straight RGBA) over ``background`` [B, H, W, 3].

    The scaled foreground's top-left corner lands at pixel (``x_offset``, ``y_offset``) of
    the background (negative values move it left/up); what falls outside is cropped and the
    uncovered background shows through. A batch of 1 on either side is repeated to the
    other's batch. Returns float32 [max(B_fg, B_bg), H, W, 3] in 0..1 on the background's
    device: ``fg_rgb * a + bg * (1 - a)``.
    """
    check_inputs(foreground, background, x_offset, y_offset, scale)
    device = background.device
    fg = premultiply(foreground.to(device=device, dtype=torch.float32).clamp(0.0, 1.0))
    bg = background.to(dtype=torch.float32).clamp(0.0, 1.0)
    fg = resize_premultiplied(fg, scale)
    fg, bg = broadcast_batch(fg, bg)

    out = bg.clone(memory_format=torch.contiguous_format)
    height, width = bg.shape[1:3]
    fg_h, fg_w = fg.shape[1:3]
    # Overlap of the placed foreground with the canvas, in canvas and in foreground pixels.
    top, left = max(y_offset, 0), max(x_offset, 0)
    bottom, right = min(y_offset + fg_h, height), min(x_offset + fg_w, width)
    if bottom <= top or right <= left:
        return out
    patch = fg[:, top - y_offset : bottom - y_offset, left - x_offset : right - x_offset]
    under = out[:, top:bottom, left:right]
    alpha = patch[..., ALPHA:]
    out[:, top:bottom, left:right] = (patch[..., :RGB] + under * (1.0 - alpha)).clamp(0.0, 1.0)
    return out


def check_inputs(foreground: Tensor, background: Tensor, x_offset: int, y_offset: int, scale: float) -> None:
    """Raise TypeError/ValueError naming the argument and what was expected."""
    for name, t in (("foreground", foreground), ("background", background)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected an IMAGE tensor [B, H, W, C], got {type(t).__name__}")
        if t.ndim != 4 or 0 in t.shape:
            raise ValueError(f"{name}: expected a non-empty IMAGE [B, H, W, C], got shape {list(t.shape)}")
    if foreground.shape[-1] != RGBA:
        hint = (
            " (an RGB image has no alpha: connect the rgba output of LayerFusionTransparentDecode)"
            if foreground.shape[-1] == RGB
            else ""
        )
        raise ValueError(
            f"foreground: expected an RGBA IMAGE with 4 channels, got {foreground.shape[-1]}{hint}"
        )
    if background.shape[-1] != RGB:
        raise ValueError(f"background: expected an RGB IMAGE with 3 channels, got {background.shape[-1]}")
    batches = (foreground.shape[0], background.shape[0])
    if batches[0] != batches[1] and 1 not in batches:
        raise ValueError(
            f"batch: foreground has {batches[0]} images, background {batches[1]}; expected equal "
            "batches or a batch of 1 on one side"
        )
    for name, value in (("x_offset", x_offset), ("y_offset", y_offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int (pixels), got {value!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < math.inf:
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")


def premultiply(rgba: Tensor) -> Tensor:
    """Straight [..., 4] RGBA -> premultiplied (RGB * A, A)."""
    alpha = rgba[..., ALPHA:]
    return torch.cat((rgba[..., :RGB] * alpha, alpha), dim=-1)


def resize_premultiplied(rgba: Tensor, scale: float) -> Tensor:
    """Resize premultiplied [B, h, w, 4] by ``scale`` (bilinear; antialiased when shrinking).

    The new size is round(h * scale) x round(w * scale), at least 1 pixel each way.
    ``scale == 1`` returns the input unchanged (no resampling).
    """
    if scale == 1.0:
        return rgba
    h, w = rgba.shape[1:3]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    nchw = rgba.movedim(-1, 1)
    resized = F.interpolate(nchw, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
    premul = resized.movedim(1, -1).clamp(0.0, 1.0)
    # Colour can never exceed its own coverage in premultiplied form.
    return torch.cat((torch.minimum(premul[..., :RGB], premul[..., ALPHA:]), premul[..., ALPHA:]), dim=-1)


def broadcast_batch(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Repeat a batch of 1 to the other tensor's batch (callers checked the batches)."""
    n = max(a.shape[0], b.shape[0])
    return a.expand(n, *a.shape[1:]), b.expand(n, *b.shape[1:])
