"""Widget and socket builders the nodes share, so each input reads the same on every node
(the layer nodes take the sampler settings exactly as the triplet sampler), and the run's
options built from those sockets. Node modules import these, never each other."""

from __future__ import annotations

from enum import Enum
from typing import Any

from comfy_api.latest import io

from ..layerfusion_core.method.run_plan import SamplerSettings
from ..layerfusion_core.options import (
    BlendOptions,
    LayerFusionOptions,
    LayoutOptions,
    NoiseOptions,
    PriorOptions,
)
from .types import (
    BlendOptionsType,
    ForegroundWeightsType,
    LayerBundleType,
    LayoutOptionsType,
    PriorOptionsType,
)


def enum_combo(name: str, enum: type[Enum], default: Enum, tooltip: str) -> io.Combo.Input:
    """A combo of an option enum's values."""
    return io.Combo.Input(name, options=[m.value for m in enum], default=default.value, tooltip=tooltip)


def unit_float(
    name: str, default: float, tooltip: str, minimum: float = 0.0, maximum: float = 1.0
) -> io.Float.Input:
    """A float slider in [minimum, maximum] (the unit interval by default), step 0.01."""
    return io.Float.Input(name, default=default, min=minimum, max=maximum, step=0.01, tooltip=tooltip)


def output(kind: Any, name: str, tooltip: str = "") -> Any:
    """An output socket of ``kind`` (io.Latent, io.Mask, ...) shown under its own name."""
    return kind.Output(name, display_name=name, tooltip=tooltip or None)


def _sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def seed_input(tooltip: str) -> io.Int.Input:
    """KSampler's seed widget (with the frontend's control after generate)."""
    return io.Int.Input(
        "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip
    )


def sampler_settings_inputs(seed_tooltip: str) -> list:
    """KSampler's own widgets: seed, steps, cfg, sampler_name, scheduler, denoise."""
    return [
        seed_input(seed_tooltip),
        io.Int.Input("steps", default=25, min=1, max=10000, tooltip="Sampling steps."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="CFG scale."),
        io.Combo.Input(
            "sampler_name", options=_sampler_names(), default="dpmpp_2m", tooltip="ComfyUI sampler."
        ),
        io.Combo.Input(
            "scheduler", options=_scheduler_names(), default="karras", tooltip="ComfyUI scheduler."
        ),
        unit_float("denoise", 1.0, "Denoise strength."),
    ]


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


SAMPLER_FIELDS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
"""The ``sampler_settings_inputs`` widgets: SamplerSettings' fields."""


def run_settings(inputs: dict[str, Any]) -> tuple[SamplerSettings, LayerFusionOptions]:
    """The sampler settings and the run's options from a sampler node's ``sampler_settings_inputs``
    widgets and ``run_option_inputs`` sockets (and Layout Options where the node has it),
    defaults where an option socket is unconnected."""
    settings = SamplerSettings(**{name: inputs[name] for name in SAMPLER_FIELDS})
    options = run_options(
        inputs.get("shared_noise", True),
        inputs.get("prior_options"),
        inputs.get("blend_options"),
        inputs.get("layout_options"),
    )
    return settings, options


def latent_like(latent_image: dict, samples) -> dict:
    """A LATENT of ``samples`` carrying the input latent's other keys, minus its noise mask
    (the sampled result needs none)."""
    return {**{k: v for k, v in latent_image.items() if k != "noise_mask"}, "samples": samples}


def layout_options_input() -> io.Input:
    """The optional Layout Options socket of the nodes that make a layer bundle."""
    return LayoutOptionsType.Input(
        "layout_options", optional=True, tooltip="From LayerFusion Layout Options (defaults if unset)."
    )


def bundle_outputs(blended_tooltip: str) -> list:
    """The outputs of the nodes that make a layer bundle: the bundle and the blended latent."""
    return [
        output(
            LayerBundleType,
            "bundle",
            "Every layer's latent and masks: decode with LayerFusion Decode Layers.",
        ),
        output(io.Latent, "blended_latent", blended_tooltip),
    ]


def transparent_decode_inputs() -> list:
    """The transparent decode's own widgets: tta, sub_batch."""
    return [
        io.Boolean.Input(
            "tta",
            default=True,
            tooltip="Test-time augmentation: decode the 8 flips/rotations and take the per-pixel "
            "median (cleaner alpha, 8x the time).",
        ),
        io.Int.Input(
            "sub_batch",
            default=1,
            min=1,
            max=64,
            tooltip="Images decoded together; higher is faster on a large GPU, 1 needs the least memory.",
        ),
    ]
