"""LayerFusionTripletSampler: FG, BG and BLENDED sampled in lockstep in one run."""

from __future__ import annotations

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from ..layerfusion_core.method.streams import StreamRole
from ..layerfusion_core.options import (
    BlendOptions,
    LayerFusionOptions,
    LayoutOptions,
    NoiseOptions,
    PriorOptions,
)
from .schema import layerfusion_schema
from .types import BlendOptionsType, ForegroundWeightsType, PriorOptionsType
from .widgets import output, sampler_settings_inputs


def model_inputs() -> list:
    """The samplers' model and FG weights sockets."""
    return [
        io.Model.Input("model", tooltip="The SDXL model (not modified: the sampler works on a clone)."),
        ForegroundWeightsType.Input("fg_weights", tooltip="From LayerFusion Foreground Weights Loader."),
    ]


def run_option_inputs() -> list:
    """The samplers' run options after the sampler settings: shared_noise, prior_options,
    blend_options."""
    return [
        io.Boolean.Input(
            "shared_noise",
            default=True,
            tooltip="Give the streams of an image the same initial noise and the same per-step noise "
            "of ancestral/SDE samplers.",
        ),
        PriorOptionsType.Input(
            "prior_options",
            optional=True,
            tooltip="From LayerFusion Prior Extractor (defaults if unset).",
        ),
        BlendOptionsType.Input(
            "blend_options",
            optional=True,
            tooltip="From LayerFusion Mask Blender (defaults if unset).",
        ),
    ]


def run_options(
    shared_noise: bool,
    prior_options: PriorOptions | None,
    blend_options: BlendOptions | None,
    layout_options: LayoutOptions | None = None,
) -> LayerFusionOptions:
    """The run's options from the sampler's option inputs (defaults where unconnected)."""
    return LayerFusionOptions(
        prior=prior_options or PriorOptions(),
        blend=blend_options or BlendOptions(),
        noise=NoiseOptions(share_initial_noise=shared_noise, share_step_noise=shared_noise),
        layout=layout_options or LayoutOptions(),
    )


def latent_like(latent_image: dict, samples) -> dict:
    """A LATENT of ``samples`` carrying the input latent's other keys, minus its noise mask
    (the sampled result needs none)."""
    return {**{k: v for k, v in latent_image.items() if k != "noise_mask"}, "samples": samples}


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
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        shared_noise: bool = True,
        prior_options: PriorOptions | None = None,
        blend_options: BlendOptions | None = None,
    ) -> io.NodeOutput:
        options = run_options(shared_noise, prior_options, blend_options)
        plan = RunPlan.triplet(fg, bg, blended, negative, latent_image, options)
        settings = SamplerSettings(seed, steps, cfg, sampler_name, scheduler, denoise)
        result = sample_triplet(model, fg_weights, plan, settings)
        latents = [
            latent_like(latent_image, result.latents[role])
            for role in (StreamRole.FG, StreamRole.BG, StreamRole.BLENDED)
        ]
        return io.NodeOutput(*latents, result.soft_mask, result.hard_mask)
