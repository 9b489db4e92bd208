"""Hostile option values: non-finite numbers and blocks the model does not have are refused
by name, never silently applied or ignored."""

import math

import pytest
import torch

from layerfusion_core.architectures.sdxl import SDXL
from layerfusion_core.controller import LayerFusionController
from layerfusion_core.method.streams import StreamSet
from layerfusion_core.options import BlendOptions, LayerFusionOptions, LayerSet, PriorOptions

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    "name", ["coefficient", "threshold", "start_percent", "end_percent", "sharing_epsilon"]
)
def test_blend_options_refuse_non_finite_values(name, value):
    with pytest.raises(ValueError, match=f"{name}: expected a finite number, got {value!r}"):
        BlendOptions(**{name: value})


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_threshold_outside_the_unit_interval_is_refused(value):
    with pytest.raises(ValueError, match="threshold: expected 0 <= threshold <= 1"):
        BlendOptions(threshold=value)


def controller(layers: str) -> LayerFusionController:
    options = LayerFusionOptions(blend=BlendOptions(layers=LayerSet(layers)))
    return LayerFusionController(options, SDXL, StreamSet(), None)


@pytest.mark.parametrize("spec", ["output.9.9", "output.5.1, input.4.7", "middle.0.10"])
def test_layers_naming_a_block_the_model_lacks_is_refused_like_structure_layer(spec):
    missing = [item.strip() for item in spec.split(",") if item.strip() not in ("output.5.1",)]
    with pytest.raises(ValueError) as layers_err:
        controller(spec)
    message = str(layers_err.value)
    assert message.startswith("layers: ") and "is not a transformer block of SDXL" in message
    for item in missing:
        assert item in message
    structure = PriorOptions(structure_layer=missing[0])
    with pytest.raises(ValueError) as structure_err:
        LayerFusionController(LayerFusionOptions(prior=structure), SDXL, StreamSet(), None)
    assert (
        str(structure_err.value)
        .split(": ", 1)[1]
        .split(" (")[0]
        .endswith("is not a transformer block of SDXL")
    )


def test_layers_of_the_model_are_accepted():
    ctrl = controller("output.5.1, middle.0.9, input")
    assert ("output", 5, 1) in ctrl.blend_blocks and ("middle", 0, 9) in ctrl.blend_blocks
    assert torch.tensor(len(ctrl.blend_blocks)).item() == 2 + 20 + 4
