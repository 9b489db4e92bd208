"""Move layers of a decoded bundle and re-harmonise (LAYERS.md 2): only BLENDED is sampled,
from the composite of the kept BG latent and the moved layers at sigma(p_start), with the
moved layers' regions pinned until sigma(p_end) and free after, where shadows and light on
the new surroundings form. BG is untouched; the layers' pixels are moved, never redrawn."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..formats import ALPHA
from ..layers.bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY, LayerBundle
from ..layers.placement import Placement, alpha_at_latent, place_image, place_mask
from ..method.reharmonize import (
    NoisyLatent,
    alpha_over,
    composite_over,
    effects_layer,
    layer_pins,
    union_alpha,
)
from ..method.run_plan import layer_seed
from ..options import ReharmonizeOptions
from .layer_decoding import vae_decode
from .progress import HIDDEN_STATE_SAMPLERS, StepObserver, check_state_visible
from .row_sampling import RowGuidance, sample_rows, schedule


def check_kept(bundle: LayerBundle, name: str = "bundle") -> None:
    """ValueError naming ``name`` unless the bundle kept the BG and FG latents a re-harmonise
    starts from."""
    if BLENDED_KEY not in bundle.prompts:
        raise ValueError(
            f"{name}: expected a bundle with a blended prompt, got one from alpha blending mode (its blended "
            "image was not sampled); re-run the Layers Sampler in generative mode"
        )
    sampler = getattr(bundle.settings, "sampler_name", "")
    if sampler.removesuffix("_gpu") in HIDDEN_STATE_SAMPLERS:
        check_state_visible(sampler, "a re-harmonise", f"{name} (its run's sampler_name)")
    missing = [key for key in (*bundle.order, BG_KEY) if key not in bundle.kept]
    if missing or not (bundle.kept_sigma or 0) > 0:
        raise ValueError(
            f"{name}: expected a bundle with kept latents (from LayerFusion Layers Sampler or Decompose, "
            f"with Layout Options' keep_percent below 1 and reached by a step of the run), got one without"
            + (f" ({', '.join(missing)} missing)" if bundle.kept and missing else "")
        )


def fresh_noise(model, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Unit noise as ComfyUI draws it for ``seed``, in the LATENT's space (where a latent at
    sigma is clean + sigma * noise)."""
    import comfy.sample

    eps = comfy.sample.prepare_noise(like, seed)
    to_latent = model.model.process_latent_out
    return to_latent(eps) - to_latent(torch.zeros_like(eps))


def start_index(sigmas: torch.Tensor, sigma: float) -> int:
    """The first step whose sigma is at or below ``sigma`` (the last entry, 0, at the end)."""
    levels = sigmas.tolist()
    return next(i for i, s in enumerate(levels) if s <= sigma * (1 + 1e-6) or i == len(levels) - 1)


def reharmonize(
    model,
    vae,
    bundle: LayerBundle,
    placements: dict[str, list[Placement]],
    options: ReharmonizeOptions,
    seed: int,
    observers: tuple[StepObserver, ...] = (),
) -> LayerBundle:
    """The decoded ``bundle`` with its FG layers placed (one placement per image, by layer
    key; layers not named stay), BG unchanged, BLENDED re-harmonised and the effects layer.
    ``seed`` seeds the fresh noise of resampled layers (seed + k for layer k) and the
    sampler's per-step noise."""
    check_kept(bundle)
    settings = bundle.settings
    sampling = model.get_model_object("model_sampling")
    sigmas = schedule(model, settings.steps, settings.sampler_name, settings.scheduler, settings.denoise)
    first = start_index(sigmas, float(sampling.percent_to_sigma(options.start_percent)))
    sigma_start = float(sigmas[first])
    until = float(sampling.percent_to_sigma(options.end_percent))

    latent_hw = bundle.latents[BG_KEY].shape[-2:]
    canvas = tuple(bundle.images[BG_KEY].shape[1:3])
    layers, alphas, images, masks = [], [], {}, {}
    for k, key in enumerate(bundle.order):
        identity = [Placement.identity(canvas[1], canvas[0])] * bundle.num_images
        placed = placements.get(key, identity)
        path = NoisyLatent.from_kept(bundle.latents[key], bundle.kept[key], bundle.kept_sigma)
        noise = fresh_noise(model, bundle.latents[key], layer_seed(seed, k))
        layers.append(path.placed(placed, noise))
        images[key] = _per_image(bundle.images[key], placed, place_image)
        masks[key] = tuple(_per_image(m, placed, place_mask) for m in bundle.masks[key])
        alphas.append(alpha_at_latent(images[key][..., ALPHA], latent_hw))

    bg = NoisyLatent.from_kept(bundle.latents[BG_KEY], bundle.kept[BG_KEY], bundle.kept_sigma)
    start = composite_over(bg.at(sigma_start), [layer.at(sigma_start) for layer in layers], alphas)
    if first < sigmas.shape[0] - 1:
        guidance = RowGuidance(
            bundle.prompts[BLENDED_KEY], bundle.negative, settings.cfg, settings.sampler_name, seed
        )
        blended = sample_rows(
            model, guidance, start, sigmas[first:], layer_pins(layers, alphas, until), observers
        )
    else:  # starting at the end: nothing to sample, BLENDED is the composite
        blended = start

    raw = vae_decode(vae, blended)
    moved = [images[key] for key in bundle.order]
    background = bundle.images[BG_KEY]
    images[BG_KEY] = background
    images[BLENDED_KEY] = alpha_over(moved, raw) if options.lock_foreground else raw
    images[EFFECTS_KEY] = effects_layer(raw, background, union_alpha(moved), options.effects_threshold)
    kept = {key: layer.kept for key, layer in zip(bundle.order, layers, strict=True)}
    kept[BG_KEY] = bundle.kept[BG_KEY]
    kept[BLENDED_KEY] = composite_over(bg.kept, [layer.kept for layer in layers], alphas)
    latents = {key: layer.clean for key, layer in zip(bundle.order, layers, strict=True)}
    latents.update({BG_KEY: bundle.latents[BG_KEY], BLENDED_KEY: blended})
    return replace(bundle, latents=latents, masks={**bundle.masks, **masks}, kept=kept, images=images)


def _per_image(batch: torch.Tensor, placements: list[Placement], place) -> torch.Tensor:
    """``place`` applied to each image of ``batch`` with its own placement."""
    return torch.cat([place(batch[n : n + 1], p) for n, p in enumerate(placements)])
