"""A test-only node giving a decoded two-layer bundle with known colours, for checking how Save
Layers' preview shows a K-layer bundle (tests/host/test_browser_preview.py). Registered with the
other stand-ins (tiny_stand_ins.NODE_CLASS_MAPPINGS). Nothing here imports ComfyUI."""

from __future__ import annotations

import torch

CATEGORY = "LayerFusion/tests"
LAYER_NAMES = ("back layer", "cat")
"""The layers' names, back to front (Save Layers files them as fg0_back_layer, fg1_cat)."""
COLOURS = {
    "fg0": (1.0, 0.0, 0.0),  # red, opaque on the right half
    "fg1": (1.0, 1.0, 0.0),  # yellow (cyan in the 2nd, 4th, ... image), opaque on the top half
    "bg": (0.0, 0.0, 1.0),
    "blended": (0.0, 1.0, 0.0),
    "effects": (1.0, 0.0, 1.0),  # magenta, alpha 0.5 everywhere
}
FG1_ODD_COLOUR = (0.0, 1.0, 1.0)


def synthetic_bundle(width: int, height: int, batch: int, effects: bool):
    """The decoded bundle: FG layers "back layer" and "cat", BG, BLENDED (and an effects layer);
    masks: the back layer's soft mask a left-to-right ramp, its hard mask its right half; the
    cat's soft mask a top-to-bottom ramp, its hard mask its top half."""
    from layerfusion_core.layers.bundle import LayerBundle

    def solid(key: str, channels: int) -> torch.Tensor:
        image = torch.zeros(batch, height, width, channels)
        image[..., :3] = torch.tensor(COLOURS[key])
        return image

    fg0, fg1 = solid("fg0", 4), solid("fg1", 4)
    fg0[:, :, width // 2 :, 3] = 1.0
    fg1[1::2, ..., :3] = torch.tensor(FG1_ODD_COLOUR)
    fg1[:, : height // 2, :, 3] = 1.0
    images = {"fg0": fg0, "fg1": fg1, "bg": solid("bg", 3), "blended": solid("blended", 3)}
    if effects:
        images["effects"] = solid("effects", 4)
        images["effects"][..., 3] = 0.5
    across = torch.linspace(0, 1, width).expand(batch, height, width).clone()
    down = torch.linspace(0, 1, height)[:, None].expand(batch, height, width).clone()
    masks = {"fg0": (across, (across > 0.5).float()), "fg1": (down, (down < 0.5).float())}
    order = ("fg0", "fg1")
    latents = {key: torch.zeros(batch, 4, height // 8, width // 8) for key in (*order, "bg", "blended")}
    bundle = LayerBundle(
        order=order,
        names=dict(zip(order, LAYER_NAMES, strict=True)),
        latents=latents,
        masks=masks,
        prompts={},
        negative=None,
        boxes={},
        settings=None,
        options=None,
    )
    return bundle.with_images(images)


class SyntheticBundle:
    """A decoded two-layer bundle with known colours (``synthetic_bundle``)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LAYERFUSION_LAYERS",)
    RETURN_NAMES = ("bundle",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "width": ("INT", {"default": 64, "min": 8, "max": 1024, "step": 8}),
                "height": ("INT", {"default": 48, "min": 8, "max": 1024, "step": 8}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 8}),
                "effects": ("BOOLEAN", {"default": False}),
            }
        }

    def make(self, width: int, height: int, batch: int, effects: bool) -> tuple:
        return (synthetic_bundle(width, height, batch, effects),)
