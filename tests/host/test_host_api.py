"""Host API that changed after 0.3.64, followed where the host has it."""

import pytest
from support.triplet_runs import run


def test_another_nodes_attention_override_sees_layerfusion_attention(tiny_sdxl):
    import comfy.ldm.modules.attention as attention

    if not hasattr(attention, "wrap_attn"):
        pytest.skip("this ComfyUI has no optimized_attention_override")
    key_lengths = []

    def override(func, q, k, v, *args, **kwargs):
        key_lengths.append(k.shape[1])
        return func(q, k, v, *args, **kwargs)

    model = tiny_sdxl.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    run(model, steps=1)
    tokens = {16 * 16 // 4, 16 * 16 // 16}  # self-attention at the two transformer levels
    assert tokens & set(key_lengths)  # our per-stream calls
    assert {2 * t for t in tokens} & set(key_lengths)  # the shared BLENDED/BG call: doubled keys


def test_every_node_is_in_our_category_and_findable_by_its_aliases_where_the_host_has_them(pack):
    import dataclasses

    from comfy_api.latest import io

    has_aliases = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    for node_id in pack.node_ids:
        info = pack.node(node_id).GET_NODE_INFO_V1()  # what /object_info serves
        assert info["category"] == "LayerFusion", node_id
        if has_aliases:
            assert info.get("search_aliases"), node_id
        else:
            assert "search_aliases" not in info, node_id


def test_merged_weights_are_cast_by_the_host_and_handed_back(make_tiny_sdxl, monkeypatch):
    """Where ComfyUI casts weights (low VRAM, dynamic VRAM, forced casting), the merged copies
    are built from the host's cast weight, through its offloadable protocol where it has one."""
    import functools
    import sys

    import comfy.ops
    from support.fg_tiny import tiny_fg_weights
    from support.triplet_runs import FG, NO_BLEND, assert_same

    from layerfusion_core.comfy_runtime import casting

    plain_model = make_tiny_sdxl(0)
    reference = run(
        plain_model, NO_BLEND, weights=tiny_fg_weights(plain_model, application="merged"), steps=1
    )
    forced = make_tiny_sdxl(0)
    forced.force_cast_weights = True  # every cast op then casts per call, as under low VRAM
    calls = []
    real_cast = comfy.ops.cast_bias_weight
    real_uncast = getattr(comfy.ops, "uncast_bias_weight", None)

    def ours() -> bool:
        return sys._getframe(2).f_globals.get("__name__") == casting.__name__

    @functools.wraps(real_cast)
    def cast(*args, **kwargs):
        if ours():
            calls.append(("cast", kwargs.get("offloadable", False)))
        return real_cast(*args, **kwargs)

    monkeypatch.setattr(comfy.ops, "cast_bias_weight", cast)
    if real_uncast is not None:

        @functools.wraps(real_uncast)
        def uncast(*args, **kwargs):
            if ours():
                calls.append(("uncast", None))
            return real_uncast(*args, **kwargs)

        monkeypatch.setattr(comfy.ops, "uncast_bias_weight", uncast)
    weights = tiny_fg_weights(forced, application="merged")
    result = run(forced, NO_BLEND, weights=weights, steps=1)
    assert_same(result.latents[FG], reference.latents[FG])
    casts = [c for c in calls if c[0] == "cast"]
    assert len(casts) == len(weights.deltas)  # one merged copy per projection, from the cast weight
    if real_uncast is not None:
        assert all(offloadable for _, offloadable in casts)
        assert len([c for c in calls if c[0] == "uncast"]) == len(casts)
