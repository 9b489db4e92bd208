"""Placements of a moved layer (layers/placement.py) and the moves that make them
(layers/moves.py): pixel and cell permutations against slicing written here, resampling
against interpolate, and the refusals that name the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layerfusion_core.layers.bundle import LayerBundle
from layerfusion_core.layers.moves import LayerMove, bundle_placements, document_placements, item_placement
from layerfusion_core.layers.placement import (
    Placement,
    alpha_at_latent,
    check_on_canvas,
    place_image,
    place_latent_cells,
    place_latent_resampled,
    place_mask,
    placement_from_move,
)

W, H = 64, 48


def rgba(seed: int = 0, box=(8, 16, 24, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, H, W, 4, generator=g)
    x, y, w, h = box
    image[..., 3] = 0
    image[:, y : y + h, x : x + w, 3] = 1
    return image


def test_identity_and_moves_copy_pixels_exactly():
    image = rgba()
    assert torch.equal(place_image(image, Placement.identity(W, H)), image)
    moved = place_image(image, Placement(5, -3, W, H))
    expected = torch.zeros_like(image)
    expected[:, : H - 3, 5:] = image[:, 3:, : W - 5]
    assert torch.equal(moved, expected)
    flipped = place_image(image, Placement(0, 0, W, H, flip_h=True))
    assert torch.equal(flipped, torch.flip(image, (2,)))
    assert torch.equal(place_mask(image[..., 3], Placement(5, -3, W, H)), expected[..., 3])


def test_a_resize_resamples_premultiplied_colour():
    image = torch.zeros(1, H, W, 4)
    image[0, 16:32, 16:48] = torch.tensor([0.2, 0.6, 1.0, 1.0])
    image[0, :16, :, :3] = 1.0  # white but transparent: must not bleed into the edge
    half = place_image(image, Placement(0, 0, W // 2, H // 2))
    alpha = half[0, ..., 3]
    assert abs(float(alpha.sum()) - 16 * 32 / 4) < 1e-3  # coverage shrinks by the area
    opaque = alpha > 0.99
    assert opaque.any()
    torch.testing.assert_close(
        half[0][opaque][:, :3], torch.tensor([0.2, 0.6, 1.0]).expand(int(opaque.sum()), 3)
    )
    edge = (alpha > 0.01) & (alpha < 0.99)
    assert (half[0][edge][:, 0] < 0.21).all()  # no white fringe from the transparent pixels
    assert (half[:, H // 2 :] == 0).all() and (half[:, :, W // 2 :] == 0).all()


def test_cell_moves_and_flips_permute_latent_cells_exactly():
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 4, H // 8, W // 8, generator=g)
    fill = torch.full_like(latent, 7.0)
    moved = place_latent_cells(latent, Placement(16, -8, W, H), fill)
    expected = fill.clone()
    expected[..., : H // 8 - 1, 2:] = latent[..., 1:, : W // 8 - 2]
    assert torch.equal(moved, expected)
    flipped = place_latent_cells(latent, Placement(8, 0, W, H, flip_v=True, flip_h=True), fill)
    expected = fill.clone()
    expected[..., 1:] = torch.flip(latent, (2, 3))[..., :-1]
    assert torch.equal(flipped, expected)
    with pytest.raises(ValueError, match="not a move by whole latent cells"):
        place_latent_cells(latent, Placement(4, 0, W, H), fill)


def test_resampling_matches_interpolate_and_the_cells_path():
    g = torch.Generator().manual_seed(2)
    latent = torch.randn(1, 4, H // 8, W // 8, generator=g)
    # A shift by whole cells: the same values as the exact path, up to float rounding.
    shifted = place_latent_resampled(latent, Placement(16, 8, W, H))
    exact = place_latent_cells(latent, Placement(16, 8, W, H), shifted)
    torch.testing.assert_close(shifted, exact, atol=1e-5, rtol=1e-5)
    # 2x about the origin: bilinear interpolation (align_corners=False), top-left quarter.
    doubled = place_latent_resampled(latent, Placement(0, 0, 2 * W, 2 * H))
    reference = F.interpolate(latent, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(doubled, reference[..., : H // 8, : W // 8], atol=1e-5, rtol=1e-5)


def test_moves_flip_and_scale_about_the_visible_part():
    alpha = torch.zeros(H, W)
    alpha[16:32, 8:32] = 1  # x 8..32, y 16..32
    assert placement_from_move(alpha, 0, 0, 1.0, False, False) == Placement(0, 0, W, H)
    assert placement_from_move(alpha, 16, -8, 1.0, False, False) == Placement(16, -8, W, H)
    # A flip keeps the part in place (the flipped canvas shows it at x 32..56: back by 24 px).
    flip = placement_from_move(alpha, 0, 0, 1.0, True, False)
    assert flip == Placement(-24, 0, W, H, flip_h=True)
    assert torch.equal(place_mask(alpha[None], flip)[0], alpha)
    # Scaled by 2 about its centre (20, 24): the part covers x -4..44, y 8..40.
    scaled = placement_from_move(alpha, 0, 0, 2.0, False, False)
    placed = place_mask(alpha[None], scaled)[0]
    assert scaled == Placement(-20, -24, 2 * W, 2 * H)
    assert placed[9:39, 0:43].min() > 0.99 and placed[:7].max() == 0 and placed[41:].max() == 0


def test_a_flip_snaps_to_whole_cells_so_it_stays_exact():
    alpha = torch.zeros(H, W)
    alpha[8:16, 3:13] = 1  # flipped canvas shows it at 51..61: 48 px back, to the nearest cell
    flip = placement_from_move(alpha, 0, 0, 1.0, True, False)
    assert flip.x % 8 == 0 and flip.on_cells(W, H)


def test_a_layer_moved_off_the_canvas_is_refused_by_name():
    alpha = torch.zeros(H, W)
    alpha[16:32, 8:32] = 1
    check_on_canvas(Placement(-31, 0, W, H), alpha, "fg0_dx")  # one pixel column still on it
    with pytest.raises(ValueError, match=r"fg0_dx: the layer would lie fully off the 64x48 canvas"):
        check_on_canvas(Placement(-32, 0, W, H), alpha, "fg0_dx")
    with pytest.raises(ValueError, match="fg0_dx"):
        check_on_canvas(Placement(0, 32, W, H), alpha, "fg0_dx")


def test_alpha_at_latent_is_the_mean_of_each_cell():
    alpha = torch.zeros(1, H, W)
    alpha[0, :8, :4] = 1
    cells = alpha_at_latent(alpha, (H // 8, W // 8))
    assert cells.shape == (1, 1, H // 8, W // 8) and cells[0, 0, 0, 0] == 0.5 and cells.sum() == 0.5


# --- moves and LAYERS items ---------------------------------------------------------------


def bundle(layers: int = 2) -> LayerBundle:
    order = tuple(f"fg{k}" for k in range(layers))
    images = {key: rgba(k) for k, key in enumerate(order)}
    images["bg"] = torch.rand(2, H, W, 3)
    images["blended"] = torch.rand(2, H, W, 3)
    latents = {key: torch.zeros(2, 4, H // 8, W // 8) for key in (*order, "bg", "blended")}
    names = {key: name for key, name in zip(order, ("chair", "cat", "lamp"), strict=False)}
    return LayerBundle(order, names, latents, {}, {}, None, {}, None, None, images=images)


def test_widget_moves_become_one_placement_per_image():
    placements = bundle_placements(bundle(), {0: LayerMove(dx=8), 1: LayerMove()})
    assert list(placements) == ["fg0"]  # an unmoved layer is left out
    assert placements["fg0"] == [Placement(8, 0, W, H)] * 2


def test_widget_moves_are_refused_by_widget_name():
    with pytest.raises(ValueError, match=r"fg1_dy: the bundle has 1 FG layer\(s\)"):
        bundle_placements(bundle(1), {1: LayerMove(dy=8)})
    with pytest.raises(ValueError, match=r"fg0_scale: expected a finite scale > 0, got 0"):
        bundle_placements(bundle(), {0: LayerMove(scale=0)})
    with pytest.raises(ValueError, match=r"fg0_scale: expected a finite scale > 0"):
        bundle_placements(bundle(), {0: LayerMove(scale=-1.0)})
    with pytest.raises(ValueError, match=r"fg0_dx/fg0_dy: the layer would lie fully off"):
        bundle_placements(bundle(), {0: LayerMove(dx=-40)})


def test_layers_items_place_layers_by_name_as_core_draws_them():
    image = torch.zeros(1, H, W, 4)
    item = {"name": "cat", "image": image, "x": 8.7, "y": -16, "w": 32, "h": 24, "flip_h": True}
    assert item_placement(item, (W, H), "layers") == Placement(8, -16, 32, 24, flip_h=True)
    assert item_placement({"name": "cat"}, (W, H), "layers") == Placement(0, 0, W, H)
    # A half-size item image shown at its own size is the layer at full size.
    small = {"image": torch.zeros(1, H // 2, W // 2, 4), "w": W // 2, "h": H // 2}
    assert item_placement(small, (W, H), "layers") == Placement(0, 0, W, H)
    document = {"version": 1, "canvas": (W, H), "layers": [{"name": "bg"}, {**item, "w": 0, "h": 0}]}
    assert document_placements(document, bundle()) == {"fg1": Placement(8, -16, W, H, flip_h=True)}


def test_layers_documents_are_refused_by_input_name():
    with pytest.raises(
        ValueError, match=r"layers: item 1 is named 'dog', which names no layer of the bundle"
    ):
        document_placements({"layers": [{"name": "dog"}]}, bundle())
    with pytest.raises(ValueError, match=r"rotation 0.5: a re-harmonise moves, scales and flips"):
        document_placements({"layers": [{"name": "cat", "rotation": 0.5}]}, bundle())
    with pytest.raises(ValueError, match=r"layers: the document's canvas is \(32, 32\)"):
        document_placements({"canvas": (32, 32), "layers": []}, bundle())
    with pytest.raises(ValueError, match="layers: expected a LAYERS document"):
        document_placements([1, 2], bundle())
    with pytest.raises(ValueError, match="placed by two items"):
        document_placements({"layers": [{"name": "cat"}, {"name": "cat"}]}, bundle())
    with pytest.raises(ValueError, match=r"fg1_dx: layer 'cat' is also placed by the layers document"):
        bundle_placements(bundle(), {1: LayerMove(dx=8)}, {"layers": [{"name": "cat", "x": 8}]})
    with pytest.raises(ValueError, match=r"layers: item 'cat': the layer would lie fully off"):
        bundle_placements(bundle(), {}, {"layers": [{"name": "cat", "x": 100}]})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "mask",
            torch.zeros(1, H, W),
            r"layers: item 'cat': mask: a re-harmonise moves the layer's own alpha",
        ),
        ("opacity", 0.5, r"layers: item 'cat': opacity 0.5: .* set opacity to 1"),
        ("blend_mode", "multiply", r"layers: item 'cat': blend_mode 'multiply': .* 'normal'"),
        ("visible", False, r"layers: item 'cat': visible is false: a re-harmonise cannot leave a layer out"),
        ("flip_h", "false", r"layers: item 'cat': flip_h must be true or false, got str 'false'"),
        ("flip_v", 1, r"layers: item 'cat': flip_v must be true or false, got int 1"),
        ("z_index", "top", r"layers: item 'cat': z_index must be a number, got 'top'"),
    ],
)
def test_fields_a_reharmonise_cannot_honour_are_refused_by_item_and_field(field, value, message):
    """Core's mask, opacity, blend mode and visibility would be silently lost on a moved layer."""
    with pytest.raises(ValueError, match=message):
        document_placements({"layers": [{"name": "cat", "x": 8, field: value}]}, bundle())


def test_fields_at_their_neutral_values_are_accepted():
    item = {"name": "cat", "x": 8, "mask": None, "opacity": 1.0, "blend_mode": "normal", "visible": True}
    assert document_placements({"layers": [item]}, bundle()) == {"fg1": Placement(8, 0, W, H)}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"canvas": "abc", "layers": []},
            r"layers: canvas must be \(width, height\) in whole pixels, got 'abc'",
        ),
        ({"canvas": 5, "layers": []}, r"layers: canvas must be \(width, height\) in whole pixels, got 5"),
        ({"canvas": (W, 0), "layers": []}, r"layers: canvas must be \(width, height\)"),
        ({"layers": [{"name": ["cat"]}]}, r"layers: item 1: name must be text, got list \['cat'\]"),
    ],
)
def test_malformed_documents_are_refused_by_field(document, message):
    with pytest.raises(ValueError, match=message):
        document_placements(document, bundle())


def test_a_z_order_other_than_the_chains_is_refused():
    swapped = {"layers": [{"name": "chair", "z_index": 3, "x": 8}, {"name": "cat", "z_index": 2}]}
    with pytest.raises(
        ValueError, match=r"layers: z_index stacks the layers in another order than the chain's"
    ):
        document_placements(swapped, bundle())
    kept = {"layers": [{"name": "chair", "z_index": 2, "x": 8}, {"name": "cat", "z_index": 3}]}
    assert list(document_placements(kept, bundle())) == ["fg0"]


def test_an_identity_item_leaves_the_layer_to_the_widgets():
    document = {"layers": [{"name": "chair", "x": 0, "y": 0}, {"name": "cat", "w": W, "h": H}]}
    assert document_placements(document, bundle()) == {}
    assert list(bundle_placements(bundle(), {1: LayerMove(dx=8)}, document)) == ["fg1"]
    with pytest.raises(ValueError, match=r"layers: item 'cat': w 1000 scales the layer beyond 8x"):
        document_placements({"layers": [{"name": "cat", "w": 1000}]}, bundle())


def test_faint_stray_alpha_is_not_the_visible_part():
    alpha = torch.zeros(H, W)
    alpha[16:32, 8:32] = 1
    clean = placement_from_move(alpha, 0, 0, 2.0, True, False)
    alpha[0, W - 1] = 0.02  # a decoder's stray pixel
    assert placement_from_move(alpha, 0, 0, 2.0, True, False) == clean


def test_a_resampled_flip_keeps_the_centre_without_snapping():
    alpha = torch.zeros(H, W)
    alpha[8:16, 3:13] = 1  # centre x 8
    placed = place_mask(alpha[None], placement_from_move(alpha, 0, 0, 1.5, True, False))[0]
    columns = torch.nonzero(placed.amax(dim=0) > 0.5).flatten().float()
    assert abs(float(columns.mean()) + 0.5 - 8.0) <= 0.5  # centre kept to the pixel, not the cell


def test_pixels_and_latent_of_a_moved_layer_land_in_the_same_place():
    """A ramp as pixels and as a latent (one value per cell, the mean of its pixels): after any
    placement the placed latent matches the placed pixels' cell means, away from the edges."""
    ramp = torch.arange(W, dtype=torch.float32).expand(H, W) / W + torch.arange(H)[:, None] / (2 * H)
    pixels = ramp[None, ..., None]
    latent = F.avg_pool2d(ramp[None, None], 8)
    for placement in (
        Placement(4, -3, W, H),
        Placement(-6, 5, round(W * 1.5), round(H * 1.5)),
        Placement(10, 2, round(W * 0.75), round(H * 0.75), flip_h=True),
        Placement(3, 0, W, H, flip_v=True),
    ):
        by_pixels = F.avg_pool2d(place_image(pixels, placement)[..., 0][:, None], 8)[0, 0]
        by_latent = place_latent_resampled(latent, placement)[0, 0]
        covered = F.avg_pool2d(
            (place_image(torch.ones_like(pixels), placement)[..., 0] > 0.999).float()[:, None], 8
        )
        inner = covered[0, 0] == 1
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
        assert inner.any(), placement
        # A ramp is linear, so both resamplings are exact: 1e-3 is a sixteenth of a pixel here.
        torch.testing.assert_close(by_latent[inner], by_pixels[inner], atol=1e-3, rtol=0), placement
