"""The LAYERS document of a decoded layer bundle (ComfyUI core's format), our composite of it,
the FG batch order and the layer file names."""

from __future__ import annotations

import pytest
import torch
from support.document_composite import composite_document

from layerfusion_core.comfy_runtime.saving import bundle_files, fg_suffix
from layerfusion_core.layers.bundle import LayerBundle
from layerfusion_core.layers.document import fg_batch, layers_document

N, H, W = 2, 6, 10
NAMES = ("sky lantern", "cat", "hat")


def decoded_bundle(k: int = 3, seed: int = 0) -> LayerBundle:
    gen = torch.Generator().manual_seed(seed)
    order = tuple(f"fg{i}" for i in range(k))
    images = {key: torch.rand(N, H, W, 4, generator=gen) for key in order}
    images.update({key: torch.rand(N, H, W, 3, generator=gen) for key in ("bg", "blended")})
    masks = {key: (torch.rand(N, H, W, generator=gen), torch.rand(N, H, W, generator=gen)) for key in order}
    return LayerBundle(
        order=order,
        names={key: NAMES[i] for i, key in enumerate(order)},
        latents={key: torch.zeros(N, 4, 1, 1) for key in (*order, "bg", "blended")},
        masks=masks,
        prompts={},
        negative=None,
        boxes=dict.fromkeys(order),
        settings=None,
        options=None,
        images=images,
    )


def reference_over(bundle: LayerBundle, n: int) -> torch.Tensor:
    """Straight alpha-over, written out in float64: BG, then each FG layer back to front."""
    out = bundle.images["bg"][n].double()
    for key in bundle.order:
        rgba = bundle.images[key][n].double()
        a = rgba[..., 3:]
        out = rgba[..., :3] * a + out * (1 - a)
    return out


def test_document_has_core_keys_types_z_order_and_names():
    bundle = decoded_bundle()
    doc = layers_document(bundle, 1)
    assert set(doc) == {"version", "canvas", "layers"} and doc["version"] == 1
    assert doc["canvas"] == (W, H) and all(type(v) is int for v in doc["canvas"])
    items = doc["layers"]
    assert [i["name"] for i in items] == ["bg", *NAMES, "blended"]
    assert [i["z_index"] for i in items] == [0, 1, 2, 3, 4]
    assert [i["visible"] for i in items] == [True, True, True, True, False]
    for item, key in zip(items, ("bg", "fg0", "fg1", "fg2", "blended"), strict=True):
        assert item["type"] == "raster" and item["x"] == 0 and item["y"] == 0
        assert isinstance(item["image"], torch.Tensor) and item["image"].ndim == 4
        assert item["image"].shape == (1, H, W, 4 if key.startswith("fg") else 3)
        assert torch.equal(item["image"][0], bundle.images[key][1])  # image 1 of the batch
        assert item["opacity"] == 1.0 and item["blend_mode"] == "normal"


@pytest.mark.parametrize("n", [0, 1])
def test_our_composite_is_the_alpha_over_of_the_layers_in_order(n):
    bundle = decoded_bundle(seed=n)
    doc = layers_document(bundle, n)
    doc["layers"].reverse()  # z_index decides, not list order
    out = composite_document(doc)
    assert out.shape == (1, H, W, 4)
    torch.testing.assert_close(out[0, ..., :3].double(), reference_over(bundle, n), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, ..., 3], torch.ones(H, W))  # BG is opaque
    # The hidden BLENDED on top is skipped; shown, it covers everything.
    doc["layers"][0]["visible"] = True
    torch.testing.assert_close(composite_document(doc)[0, ..., :3], bundle.images["blended"][n])


def test_composite_honours_offset_opacity_and_mask():
    red = torch.zeros(1, 2, 3, 4)
    red[..., 0] = 1.0
    red[..., 3] = 1.0
    mask = torch.zeros(1, 2, 3)
    mask[0, 0, 0] = 1.0  # 1 = transparent (core's convention)
    doc = {
        "version": 1,
        "canvas": (5, 4),
        "layers": [
            {"image": torch.zeros(1, 4, 5, 3), "type": "raster", "z_index": 0},
            {"image": red, "type": "raster", "z_index": 1, "x": 3, "y": 1, "opacity": 0.5, "mask": mask},
        ],
    }
    out = composite_document(doc)[0]
    expected = torch.zeros(4, 5)
    expected[1:3, 3:5] = 0.5  # the third column falls off the canvas
    expected[1, 3] = 0.0  # masked out
    torch.testing.assert_close(out[..., 0], expected)


def test_fg_batch_is_image_major_back_to_front():
    bundle = decoded_bundle()
    batch = fg_batch(bundle, bundle.images)
    assert batch.shape == (N * 3, H, W, 4)
    for n in range(N):
        for k, key in enumerate(bundle.order):
            assert torch.equal(batch[n * 3 + k], bundle.images[key][n])


def test_document_refuses_an_image_outside_the_batch_and_an_undecoded_bundle():
    bundle = decoded_bundle()
    with pytest.raises(ValueError, match=r"document_image: expected an image of the batch, 0 \.\. 1, got 2"):
        layers_document(bundle, 2)
    with pytest.raises(ValueError, match="layers: expected a decoded bundle"):
        layers_document(bundle.with_images({}), 0)


def test_layer_file_names_are_safe_unique_and_in_order():
    assert fg_suffix(0, "sky lantern") == "fg0_sky_lantern"
    assert fg_suffix(1, "../../etc/passwd") == "fg1_etc_passwd"
    assert fg_suffix(2, "???") == "fg2"
    assert fg_suffix(3, "x" * 90) == "fg3_" + "x" * 40
    files = bundle_files(decoded_bundle(), save_psd=True)
    assert list(files.shown) == ["fg0_sky_lantern", "fg1_cat", "fg2_hat", "bg", "blended"]
    assert list(files.others)[:2] == ["fg0_sky_lantern_soft_mask", "fg0_sky_lantern_hard_mask"]
    assert [(name, visible) for name, _, visible in files.psd] == [
        ("background", True),
        ("sky lantern", True),
        ("cat", True),
        ("hat", True),
        ("blended", False),
    ]
    assert bundle_files(decoded_bundle(), save_psd=False).psd == ()
