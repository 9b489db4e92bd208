"""LayerFusionDecompose: an image into RGBA foreground layers and a filled-in background, the
same layer bundle a text run gives (LAYERS.md 3)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.decomposing import decompose
from ..layerfusion_core.layers.bundle import BLENDED_KEY
from ..layerfusion_core.layers.prompts import LayeredPrompts
from .schema import layerfusion_schema
from .types import LayerPromptsType
from .widgets import (
    bundle_outputs,
    latent_like,
    layout_options_input,
    model_inputs,
    run_option_inputs,
    run_settings,
    sampler_settings_inputs,
)


class LayerFusionDecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionDecompose",
            search_aliases=("image to layers", "decompose image", "layer separation", "extract layers"),
            display_name="LayerFusion Decompose",
            description="Decomposes an image into the chained foreground layers (RGBA, with the LayerDiffuse "
            "FG weights) and a background with what is behind them filled in: the image is inverted, then "
            "held as the blended stream of a layered run. Gives the same bundle as the Layers Sampler: decode "
            "it with LayerFusion Decode Layers, move layers with LayerFusion Re-harmonize.",
            inputs=[
                *model_inputs(),
                io.Vae.Input("vae", tooltip="The SDXL VAE, to encode the image."),
                io.Image.Input(
                    "image",
                    tooltip="RGB image(s); width and height multiples of 8. A batch gives one decomposition "
                    "per image.",
                ),
                LayerPromptsType.Input(
                    "layers",
                    tooltip="The last LayerFusion Layer Prompt of the chain: one per object to take out, back "
                    "to front; a box or mask marks where it is (else its attention priors find it).",
                ),
                io.Conditioning.Input("bg", tooltip="What the background is, without the objects."),
                io.Conditioning.Input(
                    "image_prompt",
                    tooltip="What the whole image shows (the inversion and the blended stream).",
                ),
                io.Conditioning.Input("negative", tooltip="Negative prompt, shared by every stream."),
                *sampler_settings_inputs("Noise seed of ancestral/SDE samplers (FG layer k: seed + k)."),
                *run_option_inputs(),
                layout_options_input(),
            ],
            outputs=bundle_outputs("The image's latent (the blended stream ends on it)."),
        )

    @classmethod
    def execute(
        cls,
        model,
        fg_weights,
        vae,
        image,
        layers,
        bg,
        image_prompt,
        negative,
        **run: Any,
    ) -> io.NodeOutput:
        """``run``: the sampler settings widgets and the option sockets (``run_settings``)."""
        if not callable(getattr(vae, "encode", None)):
            raise TypeError(f"vae: expected a VAE, got {type(vae).__name__}")
        settings, options = run_settings(run)
        prompts = LayeredPrompts(layers, bg, image_prompt, negative)
        bundle = decompose(model, fg_weights, vae, image, prompts, settings, options)
        blended = bundle.latents[BLENDED_KEY]
        return io.NodeOutput(bundle, latent_like({"samples": blended}, blended))
