"""Host API that changed after 0.3.64, followed where the host has it."""

import pytest
from support.triplet_runs import run


def test_another_nodes_attention_override_sees_layerfusion_attention(tiny_sdxl):
    import comfy.ldm.modules.attention as attention

    if not hasattr(attention, "wrap_attn"):
        pytest.skip("this ComfyUI has no optimized_attention_override (added after 0.3.64)")
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
