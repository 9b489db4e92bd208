"""A reference compositor of LAYERS documents for tests: straight alpha-over in sRGB values,
written apart from the pack's code (core's compositor works in linear light)."""

from __future__ import annotations

from typing import Any

import torch

RGB = 3


def composite_document(document: dict[str, Any]) -> torch.Tensor:
    """Straight RGBA [1, H, W, 4] of a LAYERS document's visible items, alpha-over in z order
    (stable, higher on top) in sRGB values, as ``alpha_composite`` does: each item at its
    (x, y), scaled by its opacity and by ``1 - mask`` when it has one. Core's compositor works
    in linear light, so its result differs where layers are partly transparent."""
    width, height = document["canvas"]
    colour = torch.zeros(1, height, width, RGB)  # premultiplied
    alpha = torch.zeros(1, height, width, 1)
    for item in sorted(document["layers"], key=lambda item: item["z_index"]):
        if not item.get("visible", True):
            continue
        image = item["image"][:1].float()
        a = image[..., RGB:] if image.shape[-1] > RGB else torch.ones_like(image[..., :1])
        a = a * float(item.get("opacity", 1.0))
        if item.get("mask") is not None:
            a = a * (1.0 - item["mask"][:1].float().reshape(1, *image.shape[1:3], 1))
        x, y = int(item.get("x", 0)), int(item.get("y", 0))
        top, left = max(y, 0), max(x, 0)
        bottom, right = min(y + image.shape[1], height), min(x + image.shape[2], width)
        if bottom <= top or right <= left:
            continue
        inside = (slice(None), slice(top - y, bottom - y), slice(left - x, right - x))
        a_in, rgb_in = a[inside], image[inside][..., :RGB]
        region = (slice(None), slice(top, bottom), slice(left, right))
        colour[region] = rgb_in * a_in + colour[region] * (1.0 - a_in)
        alpha[region] = a_in + alpha[region] * (1.0 - a_in)
    straight = torch.where(alpha > 0, colour / alpha.clamp_min(1e-12), torch.zeros_like(colour))
    return torch.cat((straight.clamp(0, 1), alpha), dim=-1)
