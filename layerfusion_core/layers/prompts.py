"""The FG layers of a layered run, back to front: each layer's prompt (a one-entry
CONDITIONING carrying its EOS index), its text and name, and an optional layout (a box in
pixels, or a MASK). Built one layer at a time by the layer-prompt node chain."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

MAX_LAYERS = 4
LATENT_CELL = 8  # pixels per latent cell

Conditioning = list[list[Any]]


@dataclass(frozen=True)
class Box:
    """A layer's region in pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    def check(self, image_width: int, image_height: int, name: str = "box") -> None:
        """ValueError naming ``name`` unless the box lies inside the image and covers at least
        one latent cell."""
        for field_name in ("x", "y", "width", "height"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: {field_name} must be a whole number of pixels, got {value!r}")
        if self.width < LATENT_CELL or self.height < LATENT_CELL:
            raise ValueError(
                f"{name}: expected at least {LATENT_CELL}x{LATENT_CELL} pixels (one latent cell), got "
                f"{self.width}x{self.height}"
            )
        if (
            self.x < 0
            or self.y < 0
            or self.x + self.width > image_width
            or self.y + self.height > image_height
        ):
            raise ValueError(
                f"{name}: ({self.x}, {self.y}, {self.width}x{self.height}) is not inside the "
                f"{image_width}x{image_height} image"
            )

    def mask(self, image_width: int, image_height: int) -> torch.Tensor:
        """[H, W] float mask, 1 inside the box."""
        out = torch.zeros(image_height, image_width)
        out[self.y : self.y + self.height, self.x : self.x + self.width] = 1.0
        return out


@dataclass(frozen=True)
class LayerPrompt:
    conditioning: Conditioning
    text: str
    name: str
    box: Box | None = None
    mask: torch.Tensor | None = None  # [H, W] in 0..1, 1 = the layer's region (MASK convention of its own)
    empty: Conditioning | None = None  # the empty prompt from the same CLIP (outside the region, early)

    def region(self, image_width: int, image_height: int, name: str) -> torch.Tensor | None:
        """The layer's region as an [H, W] mask at image size, or None without a layout;
        ValueError naming ``name`` when the box or mask does not fit the image."""
        if self.box is not None:
            self.box.check(image_width, image_height, f"{name} box")
            return self.box.mask(image_width, image_height)
        if self.mask is None:
            return None
        mask = self.mask.float()
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim != 2 or tuple(mask.shape) != (image_height, image_width):
            raise ValueError(
                f"{name} mask: expected a MASK of the image's size {image_width}x{image_height}, got "
                f"{list(self.mask.shape)}"
            )
        if not torch.isfinite(mask).all():
            raise ValueError(f"{name} mask: expected finite values")
        return mask.clamp(0, 1)


@dataclass(frozen=True)
class LayerChain:
    """The FG layers, back to front (the chain's order: first = back-most)."""

    layers: tuple[LayerPrompt, ...] = ()

    def add(self, prompt: LayerPrompt) -> LayerChain:
        if len(self.layers) >= MAX_LAYERS:
            raise ValueError(
                f"layers: at most {MAX_LAYERS} foreground layers, this would be the {len(self.layers) + 1}th"
            )
        if any(layer.name == prompt.name for layer in self.layers):
            raise ValueError(
                f"name: {prompt.name!r} is already a layer of this chain; give each layer its own name"
            )
        return LayerChain((*self.layers, prompt))

    def __len__(self) -> int:
        return len(self.layers)


def check_token_widths(chain: LayerChain) -> None:
    """ValueError unless every layer's conditioning has the same channel width (prompts from
    one CLIP), and the token lengths can be stacked (repeated to a common multiple)."""
    widths = {layer.name: layer.conditioning[0][0].shape[-1] for layer in chain.layers}
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"layers: the layer prompts come from CLIPs of different widths {widths}; use one CLIP"
        )
    lengths = [layer.conditioning[0][0].shape[1] for layer in chain.layers]
    if math.lcm(*lengths) > 77 * 64:
        raise ValueError(f"layers: prompt lengths {lengths} cannot be stacked (common length too large)")
