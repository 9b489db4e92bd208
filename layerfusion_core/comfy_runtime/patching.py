"""Registering LayerFusion on a clone of the caller's ModelPatcher.

- FG weights: each attention projection becomes a row-delta module (object patch), whose
  FG rows are set per UNet call by a DIFFUSION_MODEL wrapper from ``cond_or_uncond``.
- Priors: a PREDICT_NOISE wrapper starts each evaluation and runs the FG-only prior pass.
- Our replace hooks and output patches live only in the model options of the calls we
  tag (the prior pass, and the sampler's main call, tagged by a CALC_COND_BATCH wrapper),
  so extra passes of other packs (PAG, SAG, ...) run untouched and keep their own hooks
  (attention_hooks.py).
- Per-run state is reset by an ON_PRE_RUN callback.
- Memory: the FG weights and the extra attention work show in ComfyUI's estimate (memory.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import torch

from ..method.controller import LayerFusionController, Phase
from ..method.streams import CallLayout, Stream, StreamRole
from ..models.fg_weights import ForegroundWeights
from ..models.row_deltas import RowDelta, RowSelection, make_row_delta_module
from ..options import BlockKey
from .attention_hooks import PHASE_KEY, AttentionHooks, PriorPassComplete
from .casting import cast_weight_bias
from .memory import RunMemory, attention_row_factor
from .run_inputs import RunInputs

log = logging.getLogger(__name__)

WRAPPER_KEY = "layerfusion"


@functools.cache
def _comfy():
    import comfy.ldm.modules.attention
    import comfy.model_patcher
    import comfy.ops
    import comfy.patcher_extension
    import comfy.sampler_helpers
    import comfy.samplers

    return comfy


class LayerFusionPatch:
    """Everything one LayerFusion sampling run registers on its model clone."""

    def __init__(self, controller: LayerFusionController, inputs: RunInputs) -> None:
        self.controller = controller
        self.unet = inputs.unet
        self.stream_set = inputs.plan.stream_set
        self.prior_positive = inputs.prior_positive  # FG-only positive CONDITIONING (batch N)
        # The FG rows' latent image [N, C, h, w] and noise mask, which the main call's conds
        # are built from too (inpainting models concatenate them to the UNet input).
        self.prior_latent = inputs.prior_latent
        self.prior_mask = inputs.prior_mask
        self.window_sigmas = inputs.window_sigmas  # (sigma_start, sigma_end): blending is active in between
        self.edits = inputs.edits  # the paste and pins applied to the latent at each evaluation
        self.rows = RowSelection()
        self.deltas: list[RowDelta] = []
        # The attention couple: each coupled FG stream's empty-prompt context [1, T, C], and the
        # sigma down to which it applies.
        self.empty_contexts, self.couple_sigma = inputs.couple or ({}, float("inf"))
        self._empty_keys: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.model = None
        self.hooks = AttentionHooks(
            controller, self.unet, lambda: self.layout, self._context_keys if self.empty_contexts else None
        )
        self._warned_layout = False
        self.reset()

    def __deepcopy__(self, memo: dict) -> LayerFusionPatch:
        return self

    def reset(self, patcher=None, *_: Any) -> None:
        """Start of a run (ON_PRE_RUN, after ComfyUI loaded and patched the model)."""
        self.controller.reset()
        self.layout: CallLayout | None = None
        self.expect_main = False
        self.processed_prior: list | None = None
        self.patcher = patcher
        # The weight-patch set now applied names the base weights of the merged copies.
        inner = getattr(patcher, "model", None)
        self.rows.weights_id = getattr(inner, "current_weight_patches_uuid", None)

    def _context_keys(
        self, block: BlockKey, stream: Stream, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``stream``'s empty-prompt context through ``block``'s own cross-attention to_k and
        to_v (with the FG delta: the context is an FG row's), cached for the run."""
        key = (block, stream, like.device, like.dtype)
        cached = self._empty_keys.get(key)
        if cached is None:
            path = f"diffusion_model.{self.unet.by_key[block].ldm_path}.attn2"
            context = self.empty_contexts[stream].to(like.device, like.dtype)
            saved = self.rows.indices, self.rows.positions
            self.rows.indices = torch.zeros(1, dtype=torch.long, device=like.device)
            self.rows.positions = (0,)
            try:
                cached = tuple(
                    self.model.get_model_object(f"{path}.{name}")(context) for name in ("to_k", "to_v")
                )
            finally:
                self.rows.indices, self.rows.positions = saved
            self._empty_keys[key] = cached
        return cached

    def release(self, *_: Any) -> None:
        for delta in self.deltas:
            delta.release()
        self.rows.indices = self.rows.positions = None
        self.processed_prior = None
        self.patcher = None

    def _detached(self, patcher=None, unpatch_all: bool = True, *_: Any) -> None:
        """ON_DETACH: the model's weights are unpatched (an unload), so are our merged copies."""
        if unpatch_all:
            for merged in {id(d.merged): d.merged for d in self.deltas}.values():
                merged.release()

    # -- registration ------------------------------------------------------------------
    def register(self, model, weights: ForegroundWeights | None) -> None:
        """Add the object patches, wrappers and callbacks to ``model`` (a clone)."""
        self.model = model
        comfy = _comfy()
        if weights is not None and weights.strength != 0:
            for path, delta in weights.deltas.items():
                row_delta = RowDelta(
                    delta,
                    weights.strength,
                    weights.application,
                    self.rows,
                    cast_weight_bias,
                    path,
                    weights.merged,
                )
                base = model.get_model_object(f"diffusion_model.{path}")
                model.add_object_patch(f"diffusion_model.{path}", make_row_delta_module(base, row_delta))
                self.deltas.append(row_delta)
        self.memory = RunMemory(attention_row_factor(self.stream_set, self.controller.sharing), weights)
        self.memory.register(model, WRAPPER_KEY)
        wrappers = comfy.patcher_extension.WrappersMP
        model.add_wrapper_with_key(wrappers.DIFFUSION_MODEL, WRAPPER_KEY, self._diffusion_model)
        model.add_wrapper_with_key(wrappers.PREDICT_NOISE, WRAPPER_KEY, self._predict_noise)
        model.add_wrapper_with_key(wrappers.CALC_COND_BATCH, WRAPPER_KEY, self._calc_cond_batch)
        callbacks = comfy.patcher_extension.CallbacksMP
        model.add_callback_with_key(callbacks.ON_PRE_RUN, WRAPPER_KEY, self.reset)
        model.add_callback_with_key(callbacks.ON_CLEANUP, WRAPPER_KEY, self.release)
        model.add_callback_with_key(callbacks.ON_DETACH, WRAPPER_KEY, self._detached)

    # -- wrappers ----------------------------------------------------------------------
    def _diffusion_model(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        phase = transformer_options.get(PHASE_KEY)
        self.layout = self._layout_of(transformer_options.get("cond_or_uncond"), x.shape[0], phase)
        if self.layout is not None:
            self.rows.indices = self.layout.role_tensor(StreamRole.FG, x.device)
            self.rows.positions = self.layout.role_rows(StreamRole.FG)
        # ComfyUI weight hooks can swap weights between calls: merged copies would be stale.
        self.rows.merge_allowed = getattr(self.patcher, "current_hooks", None) is None
        try:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        finally:
            self.layout = None
            self.rows.indices = self.rows.positions = None

    def _layout_of(self, cond_or_uncond, batch: int, phase) -> CallLayout | None:
        try:
            return CallLayout.for_call(
                self.stream_set, cond_or_uncond or [0], batch, fg_only=phase == Phase.PRIOR
            )
        except ValueError as err:
            if phase is not None:
                raise
            if not self._warned_layout:
                log.warning("LayerFusion: a UNet call from another node has an unexpected batch; %s", err)
                self._warned_layout = True
            return None

    def _predict_noise(self, executor, x, timestep, model_options, seed):
        sigma = float(timestep.reshape(-1)[0])
        if self.edits is not None:
            self.edits.apply(x, sigma)
        start, end = self.window_sigmas
        self.controller.begin_evaluation(active=end <= sigma <= start, coupled=sigma > self.couple_sigma)
        if self.controller.uses_prior_pass:
            self._prior_pass(executor.class_obj, x, timestep, model_options, seed)
            self.controller.settle_vote()  # the pass's vote decides before the main call blends
        self.expect_main = True
        try:
            return executor(x, timestep, model_options, seed)
        finally:
            self.expect_main = False

    def _prior_pass(self, guider, x, timestep, model_options, seed) -> None:
        """The FG stream alone, conditional rows, phase-tagged: the hooks record the maps and
        end the pass at the last one (the blocks after it, the whole highest-resolution
        decoder level on SDXL, would only compute the discarded prediction)."""
        comfy = _comfy()
        layout = CallLayout.for_call(self.stream_set, [0], x.shape[0])
        fg_rows = layout.role_tensor(StreamRole.FG, x.device)
        x_fg = x.index_select(0, fg_rows)
        timestep_fg = (
            timestep.index_select(0, fg_rows.to(timestep.device)) if timestep.numel() > 1 else timestep
        )
        model = guider.inner_model
        if self.processed_prior is None:
            conds = {"positive": comfy.sampler_helpers.convert_cond(self.prior_positive)}
            latent, mask = self._prior_latent_and_mask(model, x_fg)
            self.processed_prior = comfy.samplers.process_conds(
                model, x_fg, conds, x.device, latent_image=latent, denoise_mask=mask, seed=seed
            )["positive"]
        options = self.hooks.tagged_options(model_options, Phase.PRIOR)
        with contextlib.suppress(PriorPassComplete):
            comfy.samplers.calc_cond_batch(model, [self.processed_prior], x_fg, timestep_fg, options)

    def _prior_latent_and_mask(self, model, x_fg: torch.Tensor):
        """The latent image and denoise mask of the FG rows, prepared as the guider prepares
        the main call's (so concat-conditioned models such as inpainting ones get them)."""
        comfy = _comfy()
        latent = self.prior_latent
        if latent is not None:
            latent = latent.to(x_fg.device)
            if torch.count_nonzero(latent) > 0:  # the guider leaves an empty latent unshifted
                latent = model.process_latent_in(latent)
        mask = self.prior_mask
        if mask is not None:
            mask = comfy.sampler_helpers.prepare_mask(mask, x_fg.shape, x_fg.device)
        return latent, mask

    def _calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        if self.expect_main and model_options.get("transformer_options", {}).get(PHASE_KEY) is None:
            self.expect_main = False
            model_options = self.hooks.tagged_options(model_options, Phase.MAIN)
            with self.memory.batching_estimate(model):
                return executor(model, conds, x_in, timestep, model_options)
        return executor(model, conds, x_in, timestep, model_options)


def patch_model(model, weights: ForegroundWeights | None, inputs: RunInputs):
    """A clone of ``model`` with LayerFusion registered for the run of ``inputs``, and its
    patch object."""
    controller = LayerFusionController.for_plan(inputs.plan, inputs.unet, inputs.eos_index)
    patch = LayerFusionPatch(controller, inputs)
    clone = model.clone()
    patch.register(clone, weights)
    return clone, patch
