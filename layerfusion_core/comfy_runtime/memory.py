"""A run's memory, said the way ComfyUI's model management reads it.

- FG weights: their tensors become the parameters of one small module held by a
  ModelPatcher of its own, attached to the run's clone as an additional model. ComfyUI
  then loads them with the UNet (``load_models_gpu``), counts them against free memory,
  offloads them like any model, and keeps them loaded across runs; the deltas read the
  very same parameters, wherever the host put them. When it unloads them, the merged copies
  built from them are released too.
- Attention work: shared self-attention gives the BG and BLENDED rows twice the keys. The
  host's estimate (linear in rows) is scaled by the rows that work is worth, in both places
  the host estimates: the noise shape its PREPARE_SAMPLING estimate is made for (when the
  models are loaded), and the model's ``memory_usage_factor`` inside our main UNet calls'
  CALC_COND_BATCH (the cond/uncond batching decision), restored when the call returns, so
  no other run ever sees it (an object patch would stay in place while the model stays
  loaded, and scale the next plain run's estimate too).
- Merged FG weights: the copies not built yet are added to the PREPARE_SAMPLING estimate
  (as the rows whose activations cost as much), so ComfyUI frees room for them first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ..method.streams import StreamSet
from ..models.fg_weights import ForegroundWeights
from ..options import SharingMode, WeightApplication

PATCHER_KEY = "layerfusion_patcher"
ADDITIONAL_MODELS_KEY = "layerfusion_fg_weights"


class ForegroundWeightsModule(torch.nn.Module):
    """The FG deltas' tensors as (frozen) parameters, one child per attention projection.

    Each delta keeps pointing at its parameters, so moving this module (as ComfyUI does
    when it loads or offloads it) moves the tensors the deltas use.
    """

    def __init__(self, weights: ForegroundWeights) -> None:
        super().__init__()
        for index, delta in enumerate(weights.deltas.values()):
            child = torch.nn.Module()
            for name, value in list(vars(delta).items()):
                if isinstance(value, torch.Tensor):
                    parameter = (
                        value
                        if isinstance(value, torch.nn.Parameter)
                        else torch.nn.Parameter(value, requires_grad=False)
                    )
                    child.register_parameter(name, parameter)
                    setattr(delta, name, parameter)
            self.add_module(f"p{index}", child)


def foreground_weights_patcher(weights: ForegroundWeights, model) -> Any:
    """The ModelPatcher holding ``weights``' tensors, made once per set of tensors (every
    strength/application view of one file shares it) for ``model``'s devices."""
    import comfy.model_patcher
    import comfy.patcher_extension

    shared = weights.host_state
    patcher = shared.get(PATCHER_KEY)
    if patcher is None or (patcher.load_device, patcher.offload_device) != (
        model.load_device,
        model.offload_device,
    ):
        module = ForegroundWeightsModule(weights)
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=model.load_device, offload_device=model.offload_device
        )
        # When ComfyUI unloads the FG weights (to free memory, or all models), the merged
        # copies built from them go too: they are rebuilt on the next merged run.
        # (A detach without unpatching is ComfyUI re-seating an already loaded model.)
        merged = weights.merged

        def detached(_patcher, unpatch_all: bool = True, *_: Any) -> None:
            if unpatch_all:
                merged.release()

        patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, PATCHER_KEY, detached)
        shared[PATCHER_KEY] = patcher
    return patcher


def attention_row_factor(stream_set: StreamSet, sharing: SharingMode) -> float:
    """How many rows' worth of attention memory one row of the run costs, on average:
    rows whose self-attention sees doubled keys count twice."""
    streams = len(stream_set.streams)
    sharing = SharingMode(sharing)
    doubled = 0 if sharing == SharingMode.OFF else 1 if sharing == SharingMode.ONE_DIRECTIONAL else 2
    return (streams + doubled) / streams


def merged_bytes_to_build(weights: ForegroundWeights | None, dtype: torch.dtype) -> int:
    """Bytes the merged copies of ``weights`` will take that are not held yet (0 on the fly)."""
    if (
        weights is None
        or weights.strength == 0
        or WeightApplication(weights.application) != WeightApplication.MERGED
    ):
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    total = sum(math.prod(delta.shape) * size for delta in weights.deltas.values())
    return max(0, total - weights.merged.num_bytes)


class RunMemory:
    """What one run adds to the host's estimates: ``factor`` times the rows, plus the merged
    copies still to build."""

    def __init__(self, factor: float, weights: ForegroundWeights | None) -> None:
        self.factor = factor
        self.weights = weights

    def register(self, clone, wrapper_key: str) -> None:
        """The FG weights as an additional model of ``clone``, and the estimate wrapper."""
        import comfy.patcher_extension

        weights = self.weights
        if weights is not None and weights.strength != 0:
            clone.set_additional_models(ADDITIONAL_MODELS_KEY, [foreground_weights_patcher(weights, clone)])
        clone.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, wrapper_key, self.prepare_sampling
        )

    def prepare_sampling(self, executor, model, noise_shape, *args, **kwargs):
        """PREPARE_SAMPLING wrapper: the host estimates for the rows this run is worth."""
        rows = noise_shape[0] * self.factor
        extra = merged_bytes_to_build(self.weights, model.model_dtype())
        if extra:
            per_row = model.model.memory_required([1, *list(noise_shape[1:])])
            rows += extra / (2 * per_row)  # the host's estimate counts cond and uncond rows
        return executor(model, [math.ceil(rows), *list(noise_shape[1:])], *args, **kwargs)

    @contextlib.contextmanager
    def batching_estimate(self, base_model) -> Iterator[None]:
        """Inside one of our main calls: the cond batching decision sees ``factor``."""
        if self.factor == 1.0:
            yield
            return
        base = base_model.memory_usage_factor
        base_model.memory_usage_factor = base * self.factor
        try:
            yield
        finally:
            base_model.memory_usage_factor = base
