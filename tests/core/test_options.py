"""options.py: defaults of METHOD.md and validation of every free-form value."""

import dataclasses

import pytest

from layerfusion_core.options import (
    BlendMode,
    BlendOptions,
    ContentTiming,
    LayerFusionOptions,
    LayerSet,
    PriorOptions,
    PriorOrientation,
    PriorTiming,
    SharingMode,
    SparsityFormula,
    parse_layer_spec,
)


def test_defaults_follow_method_md():
    o = LayerFusionOptions()
    assert (o.blend.coefficient, o.blend.threshold) == (10.0, 0.5)
    assert o.blend.mode is BlendMode.GENERATIVE and o.blend.sharing is SharingMode.MASKED
    assert o.prior.orientation is PriorOrientation.DENSE and o.prior.timing is PriorTiming.PRIOR_PASS
    assert o.prior.content_timing is ContentTiming.PRIOR_PASS
    assert o.prior.formula is SparsityFormula.SUM_OF_SQUARES and o.prior.structure_layer == "last"
    assert (o.blend.start_percent, o.blend.end_percent) == (0.0, 1.0)
    assert o.noise.share_initial_noise and o.noise.share_step_noise
    assert LayerSet().contains(("middle", 0, 3))


def test_options_are_frozen_and_compare_by_value():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LayerFusionOptions().blend.coefficient = 3  # type: ignore[misc]
    assert BlendOptions(sharing="off") == BlendOptions(sharing=SharingMode.OFF)


def test_layer_spec_parsing():
    assert parse_layer_spec("input, output.5.1") == (frozenset({"input"}), frozenset({("output", 5, 1)}))
    layers = LayerSet("middle,output.5.1")
    assert layers.contains(("middle", 0, 9)) and layers.contains(("output", 5, 1))
    assert not layers.contains(("output", 5, 0)) and not layers.contains(("input", 4, 0))
    for bad in ("", "decoder", "output.5", "output.x.1"):
        with pytest.raises(ValueError, match="layers"):
            LayerSet(bad)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: BlendOptions(start_percent=0.8, end_percent=0.2), "start_percent"),
        (lambda: BlendOptions(coefficient=0), "coefficient"),
        (lambda: PriorOptions(structure_layer="output"), "structure_layer"),
        (lambda: PriorOptions(auto_vote_evaluations=0), "auto_vote_evaluations"),
    ],
)
def test_bad_values_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()
