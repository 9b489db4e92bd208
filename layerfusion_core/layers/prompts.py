"""The FG layers of a layered run, back to front: each layer's prompt (a one-entry
CONDITIONING carrying its EOS index), its text and name, and an optional layout (a box in
pixels, or a MASK). Built one layer at a time by the layer-prompt node chain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..formats import LATENT_CELL, Conditioning

MAX_LAYERS = 4
MAX_NAME_LENGTH = 100  # characters of a layer's name
RESERVED_NAMES = frozenset({"bg", "blended", "effects"})
"""Names of the non-FG items of our LAYERS documents, PSDs and file names."""


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


def check_layer_name(name: str, input_name: str = "name") -> str:
    """The layer name, stripped; ValueError naming ``input_name`` when it is empty, longer than
    ``MAX_NAME_LENGTH`` or one of the names our documents give BG, BLENDED and effects."""
    stripped = name.strip() if isinstance(name, str) else ""
    if not stripped:
        raise ValueError(f"{input_name}: expected a layer name, got an empty text")
    if len(stripped) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{input_name}: expected a layer name of at most {MAX_NAME_LENGTH} characters, got "
            f"{len(stripped)} ({stripped[:20]!r}...)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError(
            f"{input_name}: a layer name cannot hold control characters (line breaks, tabs, NUL)"
        )
    if stripped.lower() in RESERVED_NAMES:
        raise ValueError(
            f"{input_name}: {stripped!r} is the name of the pack's own {stripped.lower()} layer in saved files "
            "and LAYERS documents; give this layer another name"
        )
    return stripped


def check_region_not_empty(mask: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` when a region mask is 0 everywhere (the layer would be empty)."""
    if not bool((mask > 0).any()):
        raise ValueError(
            f"{name}: the mask is 0 everywhere, so the layer would be empty; 1 marks the layer's region "
            "(invert the mask if it marks what to leave out)"
        )


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
        check_region_not_empty(mask, f"{name} mask")
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


MAX_STACKING_FACTOR = 4
"""Rows are padded by repetition to the least common multiple of their token lengths (exact
for attention); that common length may be at most this many times the longest prompt, as
ComfyUI itself never batches conds whose lengths are further apart."""


def common_token_length(lengths: dict[str, int], what: str = "conditionings") -> int:
    """The token length every row is repeated to: the least common multiple of ``lengths``
    (name -> tokens). ValueError naming each prompt's length when that is more than
    ``MAX_STACKING_FACTOR`` times the longest (77, 78 and 76 tokens would make rows of 228,228)."""
    common = math.lcm(*lengths.values())
    longest = max(lengths.values())
    if common > MAX_STACKING_FACTOR * longest:
        listed = ", ".join(f"{name} {tokens}" for name, tokens in lengths.items())
        raise ValueError(
            f"{what}: the prompts' token lengths ({listed}) cannot be batched: rows are repeated to a "
            f"common length, here {common} tokens, at most {MAX_STACKING_FACTOR}x the longest "
            f"({MAX_STACKING_FACTOR * longest}) is allowed. Use prompts encoded in whole 77-token windows "
            "(as CLIP Text Encode and LayerFusion's encoders give them), or give a shorter blended prompt"
        )
    return common


@dataclass(frozen=True)
class LayeredPrompts:
    """The prompts of a layered run: the FG layers' chain, BG's prompt, BLENDED's (None: the
    layers' prompts and BG's, one after the other; in a decomposition, the image's prompt) and
    the negative every stream shares."""

    chain: LayerChain
    bg: Conditioning
    blended: Conditioning | None
    negative: Conditioning


def check_token_widths(chain: LayerChain) -> None:
    """ValueError unless every layer's conditioning has the same channel width (prompts from
    one CLIP), and the token lengths can be stacked (``common_token_length``)."""
    widths = {layer.name: layer.conditioning[0][0].shape[-1] for layer in chain.layers}
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"layers: the layer prompts come from CLIPs of different widths {widths}; use one CLIP"
        )
    common_token_length({layer.name: layer.conditioning[0][0].shape[1] for layer in chain.layers}, "layers")
