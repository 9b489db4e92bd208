"""A run's memory, said the way ComfyUI's model management reads it.

- FG weights: their tensors become the parameters of one small module held by a
  ModelPatcher of its own, attached to the run's clone as an additional model. ComfyUI
  then loads them with the UNet (``load_models_gpu``), counts them against free memory,
  offloads them like any model, and keeps them loaded across runs; the deltas read the
  very same parameters, wherever the host put them.
- Attention work: shared self-attention gives the BG and BLENDED rows twice the keys. The
  host's estimate (linear in rows) is scaled by the rows that work is worth: the clone's
  ``memory_usage_factor`` (an object patch, seen by the cond/uncond batching decision while
  sampling) and the noise shape of the PREPARE_SAMPLING estimate (seen when the models are
  loaded, before the object patches are in place).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..fg_weights import ForegroundWeights
from ..method.streams import StreamSet
from ..options import SharingMode

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
        shared[PATCHER_KEY] = patcher
    return patcher


def attention_row_factor(stream_set: StreamSet, sharing: SharingMode) -> float:
    """How many rows' worth of attention memory one row of the run costs, on average:
    rows whose self-attention sees doubled keys count twice."""
    streams = len(stream_set.streams)
    sharing = SharingMode(sharing)
    doubled = 0 if sharing == SharingMode.OFF else 1 if sharing == SharingMode.ONE_DIRECTIONAL else 2
    return (streams + doubled) / streams


def register_memory(clone, weights: ForegroundWeights | None, factor: float, wrapper_key: str) -> None:
    """Make ``clone``'s memory estimate see the FG weights and ``factor`` times the rows."""
    import comfy.patcher_extension

    if weights is not None and weights.strength != 0:
        clone.set_additional_models(ADDITIONAL_MODELS_KEY, [foreground_weights_patcher(weights, clone)])
    if factor == 1.0:
        return
    base = clone.get_model_object("memory_usage_factor")
    clone.add_object_patch("memory_usage_factor", base * factor)

    def prepare_sampling(executor, model, noise_shape, *args, **kwargs):
        rows = math.ceil(noise_shape[0] * factor)
        return executor(model, [rows, *list(noise_shape[1:])], *args, **kwargs)

    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, wrapper_key, prepare_sampling
    )
