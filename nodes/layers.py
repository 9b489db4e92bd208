"""K foreground layers: LayerFusionLayerPrompt (one layer of the chain, back to front) and
LayerFusionLayersSampler (the chain, BG and BLENDED sampled in lockstep into a layer bundle)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.conditioning import encode, encode_with_eos
from ..layerfusion_core.comfy_runtime.layered import sample_layered
from ..layerfusion_core.layers.bundle import BLENDED_KEY
from ..layerfusion_core.layers.prompts import (
    MAX_LAYERS,
    MAX_NAME_LENGTH,
    Box,
    LayerChain,
    LayeredPrompts,
    LayerPrompt,
    check_layer_name,
    check_region_not_empty,
    check_token_widths,
)
from .schema import layerfusion_schema
from .types import LayerPromptsType
from .widgets import (
    bundle_outputs,
    latent_like,
    layout_options_input,
    model_inputs,
    output,
    run_option_inputs,
    run_settings,
    sampler_settings_inputs,
)

MAX_BOX_SIDE = 16384


def box_inputs() -> list:
    """x, y, width, height of a layer's box in pixels; width = height = 0 means no box."""
    tips = {
        "x": "Left edge of the layer's box in pixels.",
        "y": "Top edge of the layer's box in pixels.",
        "width": "Box width in pixels (at least 8); 0 with height 0: no box.",
        "height": "Box height in pixels (at least 8); 0 with width 0: no box.",
    }
    return [io.Int.Input(n, default=0, min=0, max=MAX_BOX_SIDE, step=8, tooltip=t) for n, t in tips.items()]


def layer_box(x: int, y: int, width: int, height: int) -> Box | None:
    """The box, or None when width and height are both 0; ValueError naming the input when only
    one of them is. Whether it fits the image is checked by the sampler (which knows its size)."""
    if width == 0 and height == 0:
        return None
    if width == 0 or height == 0:
        zero = "width" if width == 0 else "height"
        raise ValueError(
            f"{zero}: expected a box side of at least 8 pixels, or width and height both 0 for no box, "
            f"got width {width}, height {height}"
        )
    return Box(x, y, width, height)


def single_mask(mask: Any) -> torch.Tensor | None:
    """A MASK of one image as [H, W]; ValueError naming ``mask`` for a batch or another shape."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a MASK [1, H, W] or [H, W], got {got}")
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise ValueError(f"mask: expected one mask (a batch of 1), got a batch of {mask.shape[0]}")
    check_region_not_empty(mask, "mask")
    return mask.reshape(mask.shape[-2:])


class LayerFusionLayerPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionLayerPrompt",
            search_aliases=("add layer prompt", "foreground layer", "multi layer"),
            display_name="LayerFusion Layer Prompt",
            description="One foreground layer: its prompt (with its end-of-text index), name and optional "
            f"box or mask, added on top of the layers chained in. Chain up to {MAX_LAYERS}; the first is "
            "the back-most.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP (one CLIP for every layer of a chain)."),
                io.String.Input("text", multiline=True, tooltip="What this transparent layer shows."),
                io.String.Input(
                    "name",
                    default="layer",
                    tooltip=f"The layer's name (unique in the chain, at most {MAX_NAME_LENGTH} characters; not bg, "
                    "blended or effects): file names, PSD and LAYERS names.",
                ),
                *box_inputs(),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Optional region of the layer at the image's size, 1 = the layer (instead of a box).",
                ),
                LayerPromptsType.Input(
                    "layers",
                    optional=True,
                    tooltip="The layers below this one (a previous LayerFusion Layer Prompt); unset: this is "
                    "the back-most layer.",
                ),
            ],
            outputs=[output(LayerPromptsType, "chain", "The layers chained in, with this layer on top.")],
        )

    @classmethod
    def execute(
        cls,
        clip,
        text: str,
        name: str,
        mask=None,
        layers=None,
        **box: int,
    ) -> io.NodeOutput:
        """``box``: the x, y, width, height widgets (``box_inputs``)."""
        if clip is None:
            raise ValueError("clip: expected a CLIP, got None (does the checkpoint contain a text encoder?)")
        if not text.strip():
            raise ValueError("text: expected the layer's prompt, got an empty text")
        name = check_layer_name(name)
        chain = LayerChain() if layers is None else layers
        if not isinstance(chain, LayerChain):
            raise TypeError(
                f"layers: expected the chain of a LayerFusion Layer Prompt, got {type(chain).__name__}"
            )
        box, region = layer_box(box["x"], box["y"], box["width"], box["height"]), single_mask(mask)
        if box is not None and region is not None:
            raise ValueError("mask: a layer takes a box or a mask, not both; set width and height to 0")
        # A layer with a layout also carries the empty prompt: outside its region, early in the
        # run, its cross-attention uses it (the attention couple, Layout Options).
        empty = None if box is None and region is None else encode(clip, "")[0]
        prompt = LayerPrompt(encode_with_eos(clip, text), text, name, box, region, empty)
        chain = chain.add(prompt)
        check_token_widths(chain)
        return io.NodeOutput(chain)


class LayerFusionLayersSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionLayersSampler",
            search_aliases=("multi layer sampler", "k layers", "layered image"),
            display_name="LayerFusion Layers Sampler",
            description="Samples the chained foreground layers (each with the LayerDiffuse FG weights), a "
            "background and the blended image together in one harmonised run. A latent batch of N gives "
            "N sets of layers.",
            inputs=[
                *model_inputs(),
                LayerPromptsType.Input("layers", tooltip="The last LayerFusion Layer Prompt of the chain."),
                io.Conditioning.Input("bg", tooltip="Background prompt."),
                io.Conditioning.Input("negative", tooltip="Negative prompt, shared by every stream."),
                io.Latent.Input(
                    "latent_image", tooltip="Empty latent (or an image latent with denoise < 1)."
                ),
                *sampler_settings_inputs("Noise seed (FG layer k > 0 draws from seed + k)."),
                *run_option_inputs(),
                io.Conditioning.Input(
                    "blended",
                    optional=True,
                    tooltip="Blended-image prompt; unset: the layers' prompts and bg's, one after the other.",
                ),
                layout_options_input(),
            ],
            outputs=bundle_outputs("Blended latent, for ordinary nodes."),
        )

    @classmethod
    def execute(
        cls,
        model,
        fg_weights,
        layers,
        bg,
        negative,
        latent_image,
        blended=None,
        **run: Any,
    ) -> io.NodeOutput:
        """``run``: the sampler settings widgets and the option sockets (``run_settings``)."""
        settings, options = run_settings(run)
        prompts = LayeredPrompts(layers, bg, blended, negative)
        bundle = sample_layered(model, fg_weights, prompts, latent_image, settings, options)
        return io.NodeOutput(bundle, latent_like(latent_image, bundle.latents[BLENDED_KEY]))
