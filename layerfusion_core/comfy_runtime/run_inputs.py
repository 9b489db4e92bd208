"""A run's inputs, prepared once from its plan: the stacked prompts, the prior pass's inputs,
the EOS indices (checked against their prompts here), the regions and EOS indices on the
model's device, the latent edits, and the blending and couple windows in sigmas. Nothing in
it is moved, converted or checked again while the model runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..architectures.families import layout_for_model
from ..architectures.sdxl import UNetLayout
from ..formats import Conditioning
from ..method.latent_pins import LatentEdits, LatentPaste
from ..method.run_plan import RunPlan
from ..method.streams import Stream
from ..models.fg_weights import ForegroundWeights
from .conditioning import check_negative, eos_per_stream, fg_only_conditioning, stack_conditionings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """What a sampling run of ``plan`` hands the sampler and the hooks (tensors on the model's
    load device where the hooks read them)."""

    plan: RunPlan  # with its regions on the device
    unet: UNetLayout
    latent_image: torch.Tensor  # [N, C, h, w], the LATENT's samples (empty latents fixed)
    positive: Conditioning  # every stream's row, image-major: row n * S + s
    prior_positive: Conditioning  # the FG rows only, image-major (the prior pass)
    eos_index: dict[Stream, torch.Tensor] | None  # per FG stream, [N] (None: mean over tokens)
    prior_latent: torch.Tensor  # the FG rows' latent image [N * K, C, h, w]
    prior_mask: torch.Tensor | None  # the FG rows' noise mask
    noise_mask: torch.Tensor | None  # every row's noise mask (or the latent's, shared)
    edits: LatentEdits | None  # the paste and pins applied at each evaluation
    window_sigmas: tuple[float, float]  # (start, end): blending and sharing act in between
    couple: tuple[dict[Stream, torch.Tensor], float] | None  # empty contexts, couple end sigma

    @property
    def num_images(self) -> int:
        return self.latent_image.shape[0]


def model_unet_layout(model) -> UNetLayout:
    """The transformer table of ``model`` (a ModelPatcher), as ``architectures.families``
    decides from its model class; every family without a table is refused by name."""
    inner = getattr(model, "model", None)
    if inner is None:
        return layout_for_model([type(model).__name__], {}, "model")
    names = [cls.__name__ for cls in type(inner).__mro__]
    config = getattr(inner, "model_config", None)
    return layout_for_model(names, getattr(config, "unet_config", {}), type(config).__name__)


def prepare_run(model, weights: ForegroundWeights | None, plan: RunPlan) -> RunInputs:
    """``plan``'s inputs for a run on ``model`` (a ModelPatcher), refused by name where they
    do not fit it."""
    import comfy.sample

    unet = model_unet_layout(model)
    if weights is not None:
        weights.check_fits(unet)
    stream_set = plan.stream_set
    if not stream_set.blended:
        log.info("LayerFusion: alpha blending mode: the BLENDED stream is not sampled; its latent repeats BG")
    check_negative(plan.negative)
    latent_image = comfy.sample.fix_empty_latent_channels(model, plan.latent["samples"])
    num_images, device = latent_image.shape[0], model.load_device
    positive = stack_conditionings(plan.prompts, stream_set, num_images)
    noise_mask = plan.latent.get("noise_mask")
    per_image_mask = noise_mask is not None and noise_mask.shape[0] == num_images
    foregrounds = stream_set.foregrounds
    sampling = model.get_model_object("model_sampling")
    blend, layout = plan.options.blend, plan.options.layout
    couple = None
    if plan.empty_contexts:
        couple = (dict(plan.empty_contexts), float(sampling.percent_to_sigma(layout.couple_end_percent)))
    on_device = replace(plan, regions={s: r.to(device) for s, r in plan.regions.items()})
    return RunInputs(
        plan=on_device,
        unet=unet,
        latent_image=latent_image,
        positive=positive,
        prior_positive=fg_only_conditioning(plan.prompts, stream_set, num_images),
        eos_index=_eos_on_device(plan, num_images, device),
        prior_latent=latent_image.repeat_interleave(foregrounds, dim=0),
        prior_mask=noise_mask.repeat_interleave(foregrounds, dim=0) if per_image_mask else noise_mask,
        noise_mask=noise_mask.repeat_interleave(len(stream_set), dim=0) if per_image_mask else noise_mask,
        edits=_latent_edits(model, on_device, latent_image.shape[-2:]),
        window_sigmas=(
            float(sampling.percent_to_sigma(blend.start_percent)),
            float(sampling.percent_to_sigma(blend.end_percent)),
        ),
        couple=couple,
    )


def _eos_on_device(plan: RunPlan, num_images: int, device) -> dict[Stream, torch.Tensor] | None:
    """Each FG stream's EOS index on ``device``, checked against its own prompt's tokens here,
    once (the hooks never look at a device tensor's values)."""
    eos = eos_per_stream(plan.prompts, plan.stream_set, num_images)
    if eos is None:
        log.warning(
            "LayerFusion: the fg conditioning has no EOS index (not from LayerFusionTextEncode); "
            "the content prior uses the mean over the prompt's tokens"
        )
        return None
    for stream, index in eos.items():
        tokens = plan.prompts[stream][0][0].shape[1]
        value = int(index[0])
        if not 0 <= value < tokens:
            raise ValueError(
                f"{plan.stream_set.name(stream)} conditioning: its EOS index {value} lies outside its "
                f"{tokens} context tokens (re-encode the prompt with a LayerFusion encode node)"
            )
    return {stream: index.to(device) for stream, index in eos.items()}


def _latent_edits(model, plan: RunPlan, latent_hw) -> LatentEdits | None:
    """The paste (FG layers with a region, while BLENDED is sampled) and the plan's pins."""
    paste = None
    if plan.regions and plan.stream_set.blended and plan.policy.paste_regions:
        paste = LatentPaste(plan.stream_set, plan.regions, latent_hw)
    if paste is None and not plan.pins:
        return None
    sampling = model.get_model_object("model_sampling")
    paste_sigma = float(sampling.percent_to_sigma(plan.options.layout.paste_end_percent))
    return LatentEdits(plan.stream_set, paste, paste_sigma, plan.pins, model.model.process_latent_in)
