"""A layered run: K FG layers (the layer-prompt chain, back to front), BG and BLENDED in one
harmonised run, given back as a layer bundle."""

from __future__ import annotations

from ..layers.bundle import BG_KEY, BLENDED_KEY, LayerBundle
from ..layers.prompts import LayerChain, LayeredPrompts, check_token_widths
from ..method.run_plan import RunPlan, SamplerSettings
from ..method.streams import StreamRole, StreamSet
from ..models.fg_weights import ForegroundWeights
from ..models.transparent_vae import pixel_size
from ..options import BlendMode, LayerFusionOptions
from .conditioning import concat_conditionings
from .model_identity import model_fingerprint
from .sampling import LayersResult, sample_layers


def layered_plan(prompts: LayeredPrompts, latent: dict, options: LayerFusionOptions) -> RunPlan:
    """The run plan of a chain: FG_k is the chain's k-th layer; BLENDED defaults to the
    layers' prompts and BG's, one after the other."""
    chain, bg, blended, negative = prompts.chain, prompts.bg, prompts.blended, prompts.negative
    if not isinstance(chain, LayerChain) or len(chain) == 0:
        raise ValueError(
            f"layers: expected a chain of LayerFusion Layer Prompt nodes, got {type(chain).__name__}"
        )
    check_token_widths(chain)
    stream_set = StreamSet(foregrounds=len(chain), blended=options.blend.mode == BlendMode.GENERATIVE)
    fgs = stream_set.fg_streams
    by_stream = {s: layer.conditioning for s, layer in zip(fgs, chain.layers, strict=True)}
    by_stream[next(s for s in stream_set.streams if s.role == StreamRole.BG)] = bg
    if stream_set.blended:
        if blended is None:
            names = [layer.name for layer in chain.layers] + ["bg"]
            blended = concat_conditionings([layer.conditioning for layer in chain.layers] + [bg], names)
        by_stream[next(s for s in stream_set.streams if s.role == StreamRole.BLENDED)] = blended
    height, width = pixel_size(latent["samples"].shape[-2:])
    regions, empty = {}, {}
    for stream, layer in zip(fgs, chain.layers, strict=True):
        region = layer.region(width, height, f"layer {layer.name!r}")
        if region is not None:
            regions[stream] = region
            if layer.empty is not None:
                empty[stream] = layer.empty[0][0]
    return RunPlan(stream_set, by_stream, negative, latent, options, regions, empty)


def sample_layered(
    model,
    weights: ForegroundWeights | None,
    prompts: LayeredPrompts,
    latent: dict,
    settings: SamplerSettings,
    options: LayerFusionOptions,
) -> LayerBundle:
    """Sample the chain's layers, BG and BLENDED for every image of ``latent``."""
    plan = layered_plan(prompts, latent, options)
    result = sample_layers(model, weights, plan, settings)
    return layer_bundle(prompts.chain, plan, result, settings, model_fingerprint(model))


def layer_bundle(
    chain: LayerChain, plan: RunPlan, result: LayersResult, settings: SamplerSettings, fingerprint: str | None
) -> LayerBundle:
    """The bundle of a layered run of ``chain`` (a text run or a decomposition) by the model
    of ``fingerprint``."""
    latents = {str(stream): z for stream, z in result.latents.items()}
    if BLENDED_KEY not in latents:  # alpha mode: BLENDED is not sampled and repeats BG
        latents[BLENDED_KEY] = latents[BG_KEY].clone()
    order = tuple(str(s) for s in plan.stream_set.fg_streams)
    options = plan.options
    return LayerBundle(
        order=order,
        names={key: layer.name for key, layer in zip(order, chain.layers, strict=True)},
        latents=latents,
        masks={str(s): masks for s, masks in result.masks.items()},
        prompts={str(s): p for s, p in plan.prompts.items()},
        negative=plan.negative,
        boxes={key: layer.box for key, layer in zip(order, chain.layers, strict=True)},
        settings=settings,
        options=options,
        keep_percent=options.layout.keep_percent,
        kept={} if result.kept is None else {str(s): z for s, z in result.kept.latents.items()},
        kept_sigma=None if result.kept is None else result.kept.sigma,
        model_fingerprint=fingerprint,
    )
