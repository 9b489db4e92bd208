"""Alpha compositing of a straight RGBA foreground over an RGB background (pure torch)."""

from __future__ import annotations

import pytest
import torch

from layerfusion_core.layers.compositing import alpha_composite, premultiply, resize_premultiplied


def rgba(batch: int, h: int, w: int, alpha: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, h, w, 3, generator=gen)
    return torch.cat((rgb, torch.full((batch, h, w, 1), alpha)), dim=-1)


def rgb(batch: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, h, w, 3, generator=torch.Generator().manual_seed(seed))


def reference(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Float64 fg * a + bg * (1 - a), same sizes, no offset."""
    fg, bg = fg.double(), bg.double()
    a = fg[..., 3:]
    return fg[..., :3] * a + bg * (1 - a)


def test_opaque_foreground_gives_foreground() -> None:
    fg, bg = rgba(2, 8, 10, 1.0), rgb(2, 8, 10)
    out = alpha_composite(fg, bg)
    assert out.shape == (2, 8, 10, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, fg[..., :3])


def test_transparent_foreground_gives_background() -> None:
    fg, bg = rgba(2, 8, 10, 0.0), rgb(2, 8, 10)
    torch.testing.assert_close(alpha_composite(fg, bg), bg)


def test_partial_alpha_matches_float64_reference() -> None:
    fg = rgba(1, 6, 7, 0.0)
    fg[..., 3] = torch.rand(1, 6, 7, generator=torch.Generator().manual_seed(5))
    bg = rgb(1, 6, 7)
    torch.testing.assert_close(alpha_composite(fg, bg).double(), reference(fg, bg), atol=1e-6, rtol=0)


def test_offset_moves_the_foreground_exactly() -> None:
    fg = torch.zeros(1, 2, 3, 4)
    fg[..., 0] = 1.0  # red
    fg[..., 3] = 1.0  # opaque 2x3 block
    bg = torch.zeros(1, 6, 8, 3)
    out = alpha_composite(fg, bg, x_offset=4, y_offset=1)
    red = out[0, ..., 0]
    expected = torch.zeros(6, 8)
    expected[1:3, 4:7] = 1.0
    assert torch.equal(red, expected)
    assert torch.equal(out[0, ..., 1:], torch.zeros(6, 8, 2))


def test_negative_offset_and_overhang_are_cropped() -> None:
    fg = rgba(1, 4, 4, 1.0)
    bg = rgb(1, 5, 5)
    out = alpha_composite(fg, bg, x_offset=-2, y_offset=3)
    # FG rows 0..1 land on canvas rows 3..4; FG columns 2..3 on canvas columns 0..1.
    assert torch.equal(out[0, 3:5, 0:2], fg[0, 0:2, 2:4, :3])
    untouched = torch.ones(5, 5, dtype=torch.bool)
    untouched[3:5, 0:2] = False
    assert torch.equal(out[0][untouched], bg[0][untouched])


def test_foreground_entirely_outside_leaves_background() -> None:
    fg, bg = rgba(1, 4, 4, 1.0), rgb(1, 4, 4)
    assert torch.equal(alpha_composite(fg, bg, x_offset=4), bg)
    assert torch.equal(alpha_composite(fg, bg, y_offset=-4), bg)


def test_smaller_foreground_keeps_background_size() -> None:
    fg, bg = rgba(1, 2, 2, 1.0), rgb(1, 5, 6)
    out = alpha_composite(fg, bg, x_offset=1, y_offset=1)
    assert out.shape == (1, 5, 6, 3)
    assert torch.equal(out[0, 1:3, 1:3], fg[0, ..., :3])


def test_scale_resizes_foreground_with_its_alpha() -> None:
    fg = torch.zeros(1, 4, 4, 4)
    fg[..., 1] = 1.0  # green, opaque
    fg[..., 3] = 1.0
    bg = torch.zeros(1, 16, 16, 3)
    out = alpha_composite(fg, bg, scale=2.0)
    green = out[0, ..., 1]
    assert torch.allclose(green[:8, :8], torch.ones(8, 8))
    assert torch.equal(green[8:, :], torch.zeros(8, 16)) and torch.equal(green[:, 8:], torch.zeros(16, 8))
    half = alpha_composite(fg, bg, scale=0.5)
    assert torch.allclose(half[0, :2, :2, 1], torch.ones(2, 2)) and half[0, 2:, :, 1].abs().max() == 0


def test_scaling_has_no_dark_fringe_from_transparent_pixels() -> None:
    # White opaque left half, transparent BLACK right half: straight-colour resampling
    # would darken the edge; premultiplied resampling keeps every covered pixel white.
    fg = torch.zeros(1, 4, 4, 4)
    fg[:, :, :2, :3] = 1.0
    fg[:, :, :2, 3] = 1.0
    bg = torch.ones(1, 12, 12, 3)  # white background: any dark pixel is a fringe
    out = alpha_composite(fg, bg, scale=3.0)
    assert out.min() > 1 - 1e-5


def test_resize_premultiplied_identity_and_colour_bounded_by_alpha() -> None:
    fg = rgba(1, 5, 5, 0.5, seed=3)
    pm = premultiply(fg)
    assert resize_premultiplied(pm, 1.0) is pm
    resized = resize_premultiplied(pm, 1.7)
    assert resized.shape == (1, 8, 8, 4)
    assert (resized[..., :3] <= resized[..., 3:] + 1e-7).all()


def test_batch_of_one_broadcasts_against_n() -> None:
    fg = rgba(1, 4, 4, 0.5)
    bg = rgb(3, 4, 4)
    out = alpha_composite(fg, bg)
    assert out.shape == (3, 4, 4, 3)
    for i in range(3):
        torch.testing.assert_close(out[i].double(), reference(fg, bg[i : i + 1])[0], atol=1e-6, rtol=0)
    out2 = alpha_composite(rgba(3, 4, 4, 0.5), rgb(1, 4, 4))
    assert out2.shape == (3, 4, 4, 3)


def test_inputs_are_not_modified() -> None:
    fg, bg = rgba(1, 4, 4, 0.5), rgb(1, 4, 4)
    fg0, bg0 = fg.clone(), bg.clone()
    alpha_composite(fg, bg, x_offset=1, scale=1.5)
    assert torch.equal(fg, fg0) and torch.equal(bg, bg0)


@pytest.mark.parametrize(
    ("fg", "bg", "kwargs", "message"),
    [
        (rgb(1, 4, 4), rgb(1, 4, 4), {}, "connect the rgba output"),
        (
            rgba(1, 4, 4, 1.0),
            rgba(1, 4, 4, 1.0),
            {},
            "background: expected an RGB IMAGE with 3 channels, got 4",
        ),
        (rgba(2, 4, 4, 1.0), rgb(3, 4, 4), {}, "foreground has 2 images, background 3"),
        (rgba(1, 4, 4, 1.0)[0], rgb(1, 4, 4), {}, "foreground: expected a non-empty IMAGE"),
        (rgba(1, 4, 4, 1.0), rgb(1, 4, 4), {"scale": 0.0}, "scale: expected a finite number > 0"),
        (rgba(1, 4, 4, 1.0), rgb(1, 4, 4), {"scale": float("nan")}, "scale"),
    ],
)
def test_errors_name_the_input(fg, bg, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        alpha_composite(fg, bg, **kwargs)


def test_offset_must_be_int() -> None:
    with pytest.raises(TypeError, match="x_offset"):
        alpha_composite(rgba(1, 4, 4, 1.0), rgb(1, 4, 4), x_offset=1.5)
