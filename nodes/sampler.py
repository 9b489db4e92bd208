"""LayerFusionTripletSampler: FG, BG and BLENDED sampled in lockstep in one run."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime import RunPlan, sample_triplet
from ..layerfusion_core.method.streams import StreamRole
from .schema import layerfusion_schema
from .widgets import (
    latent_like,
    model_inputs,
    output,
    run_option_inputs,
    run_settings,
    sampler_settings_inputs,
)


class LayerFusionTripletSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionTripletSampler",
            search_aliases=("layered image", "transparent foreground", "layerdiffuse", "ksampler layers"),
            display_name="LayerFusion Triplet Sampler",
            description="Samples a foreground (with the LayerDiffuse FG weights), a background and the "
            "blended image together; FG priors blend attention between FG and blended, and blended and "
            "background share attention. A latent batch of N gives N triplets.",
            inputs=[
                *model_inputs(),
                io.Conditioning.Input("fg", tooltip="Foreground prompt (LayerFusion Text Encode's fg)."),
                io.Conditioning.Input("bg", tooltip="Background prompt."),
                io.Conditioning.Input("blended", tooltip="Blended-image prompt."),
                io.Conditioning.Input("negative", tooltip="Negative prompt, shared by the three streams."),
                io.Latent.Input(
                    "latent_image", tooltip="Empty latent (or an image latent with denoise < 1)."
                ),
                *sampler_settings_inputs("Noise seed; the three streams of an image share their noise."),
                *run_option_inputs(),
            ],
            outputs=[
                output(
                    io.Latent, "fg_latent", "Foreground latent: decode with the VAE, then Transparent Decode."
                ),
                output(io.Latent, "bg_latent", "Background latent."),
                output(io.Latent, "blended_latent", "Blended latent (repeats bg in alpha mode)."),
                output(io.Mask, "soft_mask", "Final soft mask at image size, 1 = object."),
                output(io.Mask, "hard_mask", "Final hard mask at image size, 1 = object."),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        fg_weights,
        fg,
        bg,
        blended,
        negative,
        latent_image,
        **run: Any,
    ) -> io.NodeOutput:
        """``run``: the sampler settings widgets and the option sockets (``run_settings``)."""
        settings, options = run_settings(run)
        plan = RunPlan.triplet(fg, bg, blended, negative, latent_image, options)
        result = sample_triplet(model, fg_weights, plan, settings)
        latents = [
            latent_like(latent_image, result.latents[role])
            for role in (StreamRole.FG, StreamRole.BG, StreamRole.BLENDED)
        ]
        return io.NodeOutput(*latents, result.soft_mask, result.hard_mask)
