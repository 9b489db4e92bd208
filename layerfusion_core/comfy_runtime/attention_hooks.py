"""Our attention hooks inside tagged calls: the replace hooks (attn1/attn2) and output patches
that exist only in the model options of the calls LayerFusion tags (the prior pass and the
sampler's main call), turning ComfyUI's hook arguments into an ``AttentionCall`` for the
controller. Another pack's replace for the same layer (3- or 2-element key) is called
through; extra passes of other packs (PAG, SAG, ...) never see our hooks."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..architectures.sdxl import UNetLayout
from ..method.controller import AttentionCall, LayerFusionController, Phase
from ..method.streams import CallLayout, Stream
from ..options import BlockKey

PHASE_KEY = "layerfusion_phase"


class PriorPassComplete(Exception):
    """Ends a prior pass once its last map is recorded: the rest of the UNet call would only
    compute the pass's prediction, which is discarded (the caller catches it)."""


class AttentionHooks:
    def __init__(
        self,
        controller: LayerFusionController,
        unet: UNetLayout,
        layout: Callable[[], CallLayout | None],
        context_keys: Callable[[BlockKey, Stream, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> None:
        self.controller = controller
        self.unet = unet
        self.layout = layout  # the current UNet call's row layout (set by the patch's wrapper)
        self.context_keys = context_keys  # a stream's empty-prompt keys at a block (the couple)
        self._replace_cache: dict[tuple, Callable] = {}

    def tagged_options(self, model_options: dict, phase: Phase) -> dict:
        """A copy of ``model_options`` tagged with ``phase`` and carrying our hooks."""
        options = dict(model_options)
        to = dict(options.get("transformer_options", {}))
        options["transformer_options"] = to
        to[PHASE_KEY] = phase
        replaces = {name: dict(d) for name, d in to.get("patches_replace", {}).items()}
        to["patches_replace"] = replaces
        controller = self.controller
        for block in self.unet.blocks:
            key = block.key
            if controller.wants_self_attention(key):
                self._add_replace(replaces.setdefault("attn1", {}), key, "attn1")
            if controller.wants_cross_attention(key):
                self._add_replace(replaces.setdefault("attn2", {}), key, "attn2")
        if phase == Phase.MAIN and controller.generative:
            patches = {name: list(p) for name, p in to.get("patches", {}).items()}
            to["patches"] = patches
            patches.setdefault("attn1_output_patch", []).append(self._attn1_output)
            patches.setdefault("attn2_output_patch", []).append(self._attn2_output)
        return options

    def _add_replace(self, replaces: dict, key: BlockKey, attention: str) -> None:
        # Another pack's replace for this layer (3- or 2-element key) is called through.
        previous = replaces.get(key) or replaces.get(key[:2])
        cache_key = (key, attention, previous)
        fn = self._replace_cache.get(cache_key)
        if fn is None:
            fn = self._replace_cache[cache_key] = self._make_replace(key, attention, previous)
        replaces[key] = fn

    def _make_replace(self, key: BlockKey, attention: str, previous: Callable | None) -> Callable:
        controller = self.controller
        hook = controller.self_attention if attention == "attn1" else controller.cross_attention
        ends_prior_pass = attention == "attn2" and key == controller.prior_pass_end

        def replace(q, k, v, extra_options):
            call = self._attention_call(extra_options, key, previous)
            out = hook(q, k, v, call)
            if ends_prior_pass and call.phase == Phase.PRIOR:
                raise PriorPassComplete(key)
            return out

        return replace

    def _attention_call(self, extra_options: dict, key: BlockKey, previous: Callable | None) -> AttentionCall:
        import comfy.ldm.modules.attention

        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")

        def attention(q, k, v, heads_=heads, mask=None):
            # transformer_options carries another node's attention override
            # (optimized_attention_override) where the host has one; hosts without ignore it.
            return comfy.ldm.modules.attention.optimized_attention(
                q, k, v, heads_, mask=mask, attn_precision=precision, transformer_options=extra_options
            )

        def call_through(q, k, v):
            if previous is not None:
                return previous(q, k, v, extra_options)
            return attention(q, k, v)

        if self.layout() is None:
            raise RuntimeError("LayerFusion: a tagged attention call arrived without a batch layout")
        return AttentionCall(
            phase=Phase(extra_options[PHASE_KEY]),
            block=key,
            layout=self.layout(),
            heads=heads,
            grid=tuple(extra_options["activations_shape"][-2:]),
            call_through=call_through,
            attention=attention,
            context_keys=None if self.context_keys is None else functools.partial(self.context_keys, key),
        )

    def _output_patch(self, out: torch.Tensor, extra_options: dict, attention: str) -> torch.Tensor:
        block = extra_options.get("block")
        if block is None:
            return out
        key = (block[0], block[1], extra_options.get("block_index", 0))
        if key not in self.controller.blend_blocks:
            return out
        call = self._attention_call(extra_options, key, None)
        return self.controller.blend_output(out, call, attention)

    def _attn1_output(self, out, extra_options):
        return self._output_patch(out, extra_options, "attn1")

    def _attn2_output(self, out, extra_options):
        return self._output_patch(out, extra_options, "attn2")
