"""LayerFusionAlphaComposite: the FG layer (RGBA) over a background by its alpha, optionally
moved and scaled (the paper's alpha blending, and a first step toward moving a layer)."""

from __future__ import annotations

from comfy_api.latest import io

from ..layerfusion_core.layers.compositing import alpha_composite
from .schema import layerfusion_schema
from .widgets import output

MAX_OFFSET = 16384


class LayerFusionAlphaComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionAlphaComposite",
            search_aliases=("alpha composite", "paste layer", "layer over background"),
            display_name="LayerFusion Alpha Composite",
            description="Puts an RGBA foreground over an RGB background by its alpha; the FG can be "
            "moved and scaled. The result has the background's size; a batch of 1 on either side is "
            "used for every image of the other.",
            inputs=[
                io.Image.Input(
                    "foreground",
                    tooltip="RGBA IMAGE with straight colour: the rgba output of LayerFusionTransparentDecode.",
                ),
                io.Image.Input("background", tooltip="RGB IMAGE, e.g. the decoded BG layer."),
                io.Int.Input(
                    "x_offset",
                    default=0,
                    min=-MAX_OFFSET,
                    max=MAX_OFFSET,
                    tooltip="Pixels to move the foreground right (negative: left); parts outside are cut off.",
                ),
                io.Int.Input(
                    "y_offset",
                    default=0,
                    min=-MAX_OFFSET,
                    max=MAX_OFFSET,
                    tooltip="Pixels to move the foreground down (negative: up).",
                ),
                io.Float.Input(
                    "scale",
                    default=1.0,
                    min=0.01,
                    max=8.0,
                    step=0.01,
                    tooltip="Resize the foreground and its alpha about its top-left corner (premultiplied "
                    "resampling: no dark fringes); applied before the offset.",
                ),
            ],
            outputs=[output(io.Image, "image", "RGB IMAGE: foreground over background.")],
        )

    @classmethod
    def execute(cls, foreground, background, x_offset: int, y_offset: int, scale: float) -> io.NodeOutput:
        return io.NodeOutput(
            alpha_composite(foreground, background, int(x_offset), int(y_offset), float(scale))
        )
