"""Shared helpers for host tests that run the triplet on the tiny model: the standard
conditionings, one call of ``sample_triplet``, a plain KSampler reference, and the float
tolerance used to compare them."""

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from layerfusion_core.method.streams import StreamRole
from layerfusion_core.options import BlendOptions, LayerFusionOptions, LayerSet, SharingMode
from support.fg_tiny import tiny_fg_weights
from support.tiny_sdxl import make_cond, make_latent

FG, BG, BL = StreamRole.FG, StreamRole.BG, StreamRole.BLENDED
NO_BLEND = LayerFusionOptions(
    blend=BlendOptions(layers=LayerSet(self_attention=False, cross_attention=False), sharing=SharingMode.OFF)
)
DEFAULT = LayerFusionOptions()


def assert_same(a, b, tolerance=2e-5):
    """Equal up to float32 batching noise, relative to the latent's magnitude. ComfyUI's own
    batch-1 and batch-3 runs of one prompt differ by ~3e-6 of it on this random model; the
    random network amplifies such noise strongly once blending feeds FG maps back (a changed
    GEMM batch moves blended latents by ~2e-4 of their magnitude after 3 steps)."""
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= tolerance * scale, f"{(a - b).abs().max().item()} vs scale {scale}"


def conds():
    fg, bg, bl, neg = (make_cond(s) for s in (1, 2, 3, 4))
    fg[0][1]["layerfusion_eos_index"] = 6
    return fg, bg, bl, neg


def run(model, options=DEFAULT, weights="tiny", images=1, sampler="euler", cfg=5.0, steps=3, seed=7, **kw):
    fg, bg, bl, neg = conds()
    if weights == "tiny":
        weights = tiny_fg_weights(model)
    return sample_triplet(
        model,
        weights,
        RunPlan.triplet(fg, bg, bl, neg, make_latent(images), options),
        SamplerSettings(seed, steps, cfg, sampler, "normal", **kw),
    )


def plain(model, cond, sampler="euler", cfg=5.0, steps=3, seed=7, images=1):
    import nodes

    neg = make_cond(4)
    (out,) = nodes.common_ksampler(model, seed, steps, cfg, sampler, "normal", cond, neg, make_latent(images))
    return out["samples"]
