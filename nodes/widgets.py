"""Widget and socket builders the nodes share, so each option reads the same everywhere
(and the layer nodes to come take the sampler settings exactly as the triplet sampler)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from comfy_api.latest import io


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
