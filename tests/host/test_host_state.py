"""Nothing a run registers outlives it: one ComfyUI process, many workflows on one model.

A LayerFusion run object-patches every attention projection of its clone. ComfyUI keeps
per-module load bookkeeping (which modules already carry their weight patches); a run must
leave that bookkeeping true for the original modules, so a LoRA applied to the same model
afterwards, or before LayerFusion in the graph, is applied in full.
"""

import torch
from support.fg_tiny import tiny_fg_weights, tiny_lora_state_dict
from support.triplet_runs import BG, BL, FG, NO_BLEND, assert_same, conds, plain, run

from layerfusion_core.architectures.sdxl import layout_from_unet_config


def lora_deltas(model, seed: int = 11, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A LoRA-like weight difference on every attention ``to_q`` of the model."""
    layout = layout_from_unet_config(model.model.model_config.unet_config)
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for p in layout.projections:
        if p.ldm_path.endswith("to_q"):
            deltas[f"diffusion_model.{p.ldm_path}.weight"] = (
                torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5
            )
    return deltas


def with_weight_patches(model, deltas: dict[str, torch.Tensor], strength: float = 1.0):
    """A clone carrying ``deltas`` as ComfyUI "diff" weight patches (as a LoRA loader adds)."""
    clone = model.clone()
    added = clone.add_patches({k: ("diff", (v,)) for k, v in deltas.items()}, strength)
    assert len(added) == len(deltas)
    return clone


def fg_weight_patches(model, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The tiny FG LoRA of ``tiny_fg_weights`` as dense weight differences."""
    sd = tiny_lora_state_dict(model)
    out = {}
    for key in sd:
        if key.endswith("::lora::0"):
            base = key[: -len("::lora::0")]
            up, down = sd[key], sd[base + "::lora::1"]
            out[base] = strength * (up @ down)
    return out


def test_a_lora_after_a_layerfusion_run_is_applied_in_full(make_tiny_sdxl):
    used, fresh = make_tiny_sdxl(0), make_tiny_sdxl(0)
    fg = conds()[0]
    plain(used, fg)
    run(used)
    after = plain(with_weight_patches(used, lora_deltas(used)), fg)
    reference = plain(with_weight_patches(fresh, lora_deltas(fresh)), fg)
    assert not torch.equal(reference, plain(fresh, fg))  # the LoRA has an effect
    assert torch.equal(after, reference)
    assert torch.equal(plain(used, fg), plain(fresh, fg))  # and the model itself is back


def test_a_lora_before_layerfusion_reaches_every_stream_and_the_fg_rows_get_both(make_tiny_sdxl):
    model = make_tiny_sdxl(0)
    fg, bg, bl, _ = conds()
    plain(model, fg)  # the model was loaded (and patched) once before, as in a long session
    lora = with_weight_patches(model, lora_deltas(model))
    result = run(lora, NO_BLEND, weights=tiny_fg_weights(lora, strength=0.0))
    for role, cond in ((FG, fg), (BG, bg), (BL, bl)):
        assert_same(result.latents[role], plain(lora, cond))

    result = run(lora, NO_BLEND)
    both = with_weight_patches(lora, fg_weight_patches(model))
    assert_same(result.latents[FG], plain(both, fg), tolerance=1e-4)
    assert_same(result.latents[BG], plain(lora, bg))
    assert_same(result.latents[BL], plain(lora, bl))


def test_a_second_run_with_other_fg_weights_equals_a_run_on_a_fresh_model(make_tiny_sdxl):
    used, fresh = make_tiny_sdxl(0), make_tiny_sdxl(0)
    used_lora = with_weight_patches(used, lora_deltas(used))
    fresh_lora = with_weight_patches(fresh, lora_deltas(fresh))
    run(used_lora, weights=tiny_fg_weights(used, strength=1.0))
    for application in ("on_the_fly", "merged"):
        second = run(used_lora, weights=tiny_fg_weights(used, strength=0.5, seed=3, application=application))
        reference = run(
            fresh_lora, weights=tiny_fg_weights(fresh, strength=0.5, seed=3, application=application)
        )
        fresh_lora = with_weight_patches(make_tiny_sdxl(0), lora_deltas(fresh))
        for role in (FG, BG, BL):
            assert torch.equal(second.latents[role], reference.latents[role]), (application, role)


def test_every_module_is_back_in_the_tree_with_its_bookkeeping(make_tiny_sdxl):
    model = make_tiny_sdxl(0)
    plain(model, conds()[0])
    before = {name: (type(m), dict(m.__dict__)) for name, m in model.model.named_modules()}
    run(model)
    plain(model, conds()[0])  # ComfyUI swaps the original modules back when it next loads
    after = {name: (type(m), dict(m.__dict__)) for name, m in model.model.named_modules()}
    assert before.keys() == after.keys()
    for name, (cls, state) in before.items():
        assert after[name][0] is cls, name
        assert after[name][1].keys() == state.keys(), name
