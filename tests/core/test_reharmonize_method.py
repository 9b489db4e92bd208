"""The pure parts of a re-harmonise (method/reharmonize.py) against references written here:
the noising path of a kept latent, the layer composite, the pins, the effects layer."""

from __future__ import annotations

import torch

from layerfusion_core.layers.placement import Placement
from layerfusion_core.method.reharmonize import (
    NoisyLatent,
    alpha_over,
    composite_over,
    effects_layer,
    layer_pins,
    union_alpha,
)

g = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def test_a_kept_latent_implies_its_noise_and_comes_back_exactly():
    clean, kept = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    path = NoisyLatent.from_kept(clean, kept, 3.5)
    assert path.at(3.5) is kept and path.at(0.0) is clean
    torch.testing.assert_close(path.at(7.0), 2 * kept - clean)  # linear in sigma through both


def test_a_resampled_layer_takes_the_fresh_noise_and_a_cell_move_keeps_its_own():
    clean, kept = torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 4, 6, 8, generator=g)
    fresh = torch.randn(1, 4, 6, 8, generator=g)
    path = NoisyLatent.from_kept(clean, kept, 2.0)
    scaled = path.placed([Placement(-8, -8, 80, 60)], fresh)
    assert torch.equal(scaled.noise, fresh)
    torch.testing.assert_close(scaled.kept, scaled.clean + 2.0 * fresh)
    moved = path.placed([Placement(8, 0, 64, 48)], fresh)
    assert torch.equal(moved.kept[..., 1:], kept[..., :-1])
    assert torch.equal(moved.noise[..., :1], fresh[..., :1])  # the vacated column: fresh noise


def test_the_composite_is_alpha_over_back_to_front():
    base = rand(2, 4, 5, 5).double()
    layers = [rand(2, 4, 5, 5).double() for _ in range(3)]
    alphas = [rand(2, 1, 5, 5).double() for _ in range(3)]
    expected = base * (1 - alphas[0]) * (1 - alphas[1]) * (1 - alphas[2])
    for k in range(3):
        cover = torch.ones_like(alphas[0])
        for f in range(k + 1, 3):
            cover = cover * (1 - alphas[f])
        expected = expected + layers[k] * alphas[k] * cover
    torch.testing.assert_close(composite_over(base, layers, alphas), expected)


def test_pins_in_order_composite_the_layers_and_hold_opaque_cells_exactly():
    paths = [NoisyLatent.from_kept(rand(1, 4, 4, 4), rand(1, 4, 4, 4), 1.0) for _ in range(2)]
    alphas = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)]
    alphas[0][..., :2, :] = 1.0
    alphas[1][..., :, :2] = 0.5
    x = rand(1, 4, 4, 4)
    start = x.clone()
    pins = layer_pins(paths, alphas, until_sigma=0.5)
    for pin in pins:
        pin.apply(x, 2.0)
    torch.testing.assert_close(x, composite_over(start, [p.at(2.0) for p in paths], alphas))
    assert torch.equal(x[..., :2, 2:], paths[0].at(2.0)[..., :2, 2:])  # fg0 opaque, fg1 absent
    held = x.clone()
    for pin in pins:
        pin.apply(x, 0.5)  # at the end of the window: free
    assert torch.equal(x, held)


def test_effects_put_over_bg_rebuild_the_image_and_stay_off_the_layers():
    background = rand(1, 6, 6, 3)
    harmonised = rand(1, 6, 6, 3)
    harmonised[0, 0, 0] = background[0, 0, 0] + 0.01  # a tiny difference
    cover = torch.zeros(1, 6, 6)
    cover[0, 5] = 1.0
    effects = effects_layer(harmonised, background, cover, threshold=0.0)
    assert effects.shape == (1, 6, 6, 4) and (effects >= 0).all() and (effects <= 1).all()
    rebuilt = alpha_over([effects], background)
    torch.testing.assert_close(rebuilt[0, :5], harmonised[0, :5], atol=1e-5, rtol=0)
    assert (effects[0, 5, :, 3] == 0).all()  # under an opaque layer: nothing
    # A shadow (darker) is dark and partly transparent, never more opaque than it needs.
    shadow = effects_layer(background * 0.5, background, torch.zeros(1, 6, 6))
    assert torch.allclose(shadow[..., 3], torch.full((1, 6, 6), 0.5), atol=1e-5)
    assert (shadow[..., :3] < 1e-5).all()
    thresholded = effects_layer(harmonised, background, cover, threshold=0.02)
    assert thresholded[0, 0, 0, 3] == 0 and thresholded[0, 1, 1, 3] > 0


def test_alpha_over_and_union():
    layers = [torch.cat((rand(1, 2, 2, 3), torch.full((1, 2, 2, 1), a)), dim=-1) for a in (0.5, 0.25)]
    base = rand(1, 2, 2, 3)
    expected = (base * 0.5 + layers[0][..., :3] * 0.5) * 0.75 + layers[1][..., :3] * 0.25
    torch.testing.assert_close(alpha_over(layers, base), expected)
    torch.testing.assert_close(union_alpha(layers), torch.full((1, 2, 2), 1 - 0.5 * 0.75))
