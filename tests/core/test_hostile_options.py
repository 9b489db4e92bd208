"""Hostile option values: non-finite numbers and blocks the model does not have are refused
by name, never silently applied or ignored."""

import math

import pytest
import torch

from layerfusion_core.architectures.sdxl import SDXL
from layerfusion_core.method.controller import LayerFusionController
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


def test_structure_layer_is_read_as_typed_and_refused_by_its_own_name():
    assert PriorOptions(structure_layer="last ").structure_layer == "last"
    assert PriorOptions(structure_layer=" output.5.1").structure_layer == "output.5.1"
    with pytest.raises(ValueError, match=r"^structure_layer: expected 'all', a group .* got 'lats'"):
        PriorOptions(structure_layer="lats")
    with pytest.raises(ValueError, match=r"^structure_layer: expected 'last' or one block"):
        PriorOptions(structure_layer="output.5.1, input")


def test_layer_seeds_wrap_at_the_seed_widgets_range():
    from layerfusion_core.method.run_plan import layer_seed

    assert layer_seed(7, 2) == 9
    assert layer_seed(2**64 - 1, 1) == 0
    assert layer_seed(2**64 - 2, 3) == 1


def test_token_lengths_stack_within_four_times_the_longest():
    from layerfusion_core.layers.prompts import common_token_length

    assert common_token_length({"fg": 77, "bg": 154, "blended": 231}) == 462
    assert common_token_length({"fg0": 231, "fg1": 308, "bg": 77, "blended": 616}) == 1848
    with pytest.raises(
        ValueError, match=r"conditionings: .* \(fg 77, bg 78, blended 76\) .* here 228228 tokens"
    ):
        common_token_length({"fg": 77, "bg": 78, "blended": 76})
    with pytest.raises(ValueError, match=r"layers: .* \(cat 77, dog 78\)"):
        common_token_length({"cat": 77, "dog": 78}, "layers")


class _StatedVae:
    """Only the two facts a VAE states about its latents (comfy.sd.VAE's attribute names)."""

    def __init__(self, channels: int, ratio) -> None:
        self.latent_channels, self.downscale_ratio = channels, ratio


def test_a_vae_of_another_scale_is_refused_before_decoding():
    from layerfusion_core.comfy_runtime.model_identity import check_vae_fits
    from layerfusion_core.layers.bundle import LayerBundle

    latents = {"bg": torch.zeros(1, 4, 8, 8)}
    bundle = LayerBundle(
        (), {}, latents, {}, {}, None, {}, None, None, images={"bg": torch.zeros(1, 64, 64, 3)}
    )
    check_vae_fits(_StatedVae(4, 8), bundle)
    with pytest.raises(ValueError, match=r"vae: this VAE scales latents by 16, the bundle's images are 8x"):
        check_vae_fits(_StatedVae(4, 16), bundle)
    with pytest.raises(ValueError, match=r"vae: expected a VAE of 4-channel latents .* 16 channels"):
        check_vae_fits(_StatedVae(16, 8), bundle)


def test_signed_seeds_draw_the_same_noise_and_leave_room_for_one_more():
    from layerfusion_core.method.run_plan import signed_seed

    for seed in (0, 7, 2**63 - 1, 2**63, 2**64 - 1):
        signed = signed_seed(seed)
        assert -(2**63) <= signed and signed + 1 <= 2**64 - 1  # torch takes -2^63 .. 2^64 - 1
        same = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(signed)
        assert torch.equal(torch.randn(4, generator=same[0]), torch.randn(4, generator=same[1]))
