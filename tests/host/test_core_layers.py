"""This pack's layers inside ComfyUI core's layer system (ComfyUI 0.33 and later: the LAYERS
type, Add Layer, Layers From Bounding Boxes, Create Layered Image), on the tiny stand-ins. Core's
real nodes run on our real outputs, in-process, as the executor calls them:

- Create Layered Image draws Decode Layers' document: the canvas is the image's size, the
  layers stack BG, then the FG layers back to front (straight colour, composited in linear
  light), and the hidden BLENDED item is not drawn;
- Add Layer stacks onto our document, and Create Layered Image still draws it;
- documents made by Add Layer and Layers From Bounding Boxes place our layers for Re-harmonize:
  x, y, w/h (scaled) and flips are used, and a mask, an opacity other than 1, a blend mode other
  than normal or a rotation is refused naming the item and the field, never silently ignored;
  an item naming no layer of the bundle is refused by its name; Decode Layers' own document
  is accepted back;
- the documents of a re-harmonised bundle (with its effects layer) and of a decomposition go
  through Create Layered Image: it runs, the canvas is right, the layers are in order.

On a host without core's layer nodes every test here is skipped with one line saying so.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from support.core_layers import CORE_LAYER_NODES, load_core_layer_nodes, no_core_layers_reason
from support.fg_tiny import tiny_fg_weights
from support.pack_loading import run_node
from support.reharmonize_node import run_reharmonize
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import TinyCLIP, random_decoder_state_dict, tiny_vae

from layerfusion_core.comfy_runtime.loaders import LoadedDecoder
from layerfusion_core.models.transparent_vae import TransparentDecoder

SIZE = 64  # pixels (latent 8 x 8)
SETTINGS = {"seed": 7, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
# Core's compositor rounds every layer to 8 bits before it composites.
EIGHT_BIT = 1.0 / 255 + 1e-4
ALPHA_GAIN = 40.0  # the test decoder's alpha contrast: many pixels fully opaque or fully clear


@pytest.fixture(scope="module")
def core(comfy_host) -> SimpleNamespace:
    """Core's layer node classes (``core.AddLayer`` ...), registered as a server registers its
    built-in nodes; the module is skipped on a host without them."""
    missing = load_core_layer_nodes(comfy_host)
    if missing:
        pytest.skip(no_core_layers_reason(comfy_host.version, missing))
    return SimpleNamespace(**{name: comfy_host.nodes.NODE_CLASS_MAPPINGS[name] for name in CORE_LAYER_NODES})


@pytest.fixture(scope="module")
def decoder(core) -> LoadedDecoder:
    """The transparent decoder's real architecture with random weights, its alpha output made
    steep so that a good share of each layer is fully opaque and a good share fully clear
    (the published decoder gives such alphas; the plain random one hovers around 0.5)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    state = random_decoder_state_dict()
    state["conv_out.weight"][0] *= ALPHA_GAIN  # output channel 0 is alpha
    model = TransparentDecoder.from_state_dict(state).float()
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.vae_device(), offload_device=mm.vae_offload_device()
    )
    return LoadedDecoder(patcher, "random, steep alpha", torch.float32)


def layer_prompt(pack, clip, text: str, name: str, chain=None, mask=None):
    kw = {} if chain is None else {"layers": chain}
    if mask is not None:
        kw["mask"] = mask
    node = pack.node("LayerFusionLayerPrompt")
    return run_node(node, clip=clip, text=text, name=name, x=0, y=0, width=0, height=0, **kw).result[0]


def decode(pack, bundle, decoder) -> SimpleNamespace:
    """Decode Layers as the executor runs it (inference mode)."""
    with torch.inference_mode():
        decoded, fgs, bg, blended, _, _, document = run_node(
            pack.node("LayerFusionDecodeLayers"),
            bundle=bundle, vae=tiny_vae(), decoder=decoder, tta=False, sub_batch=1, document_image=0,
        ).result  # fmt: skip
    return SimpleNamespace(decoded=decoded, fgs=fgs, bg=bg, blended=blended, document=document)


@pytest.fixture(scope="module")
def run(core, pack, tiny_sdxl, decoder) -> SimpleNamespace:
    """A two-layer text run (chair at the back, cat in front) from the Layers Sampler node,
    decoded by Decode Layers: ``decoded``, ``fgs``, ``bg``, ``blended``, ``document``."""
    clip = TinyCLIP()
    chain = layer_prompt(pack, clip, "a chair", "chair")
    chain = layer_prompt(pack, clip, "a cat", "cat", chain)
    bundle, _ = run_node(
        pack.node("LayerFusionLayersSampler"), model=tiny_sdxl, fg_weights=tiny_fg_weights(tiny_sdxl),
        layers=chain, bg=make_cond(2), negative=make_cond(4), latent_image=make_latent(1, SIZE // 8, SIZE // 8),
        shared_noise=True, **SETTINGS,
    ).result  # fmt: skip
    return decode(pack, bundle, decoder)


def composite(core, document: dict[str, Any]) -> SimpleNamespace:
    """Create Layered Image on ``document``: ``image``, ``mask`` and its UI output ``ui``."""
    out = run_node(core.ImageCompositor, layers=document)
    image, mask = out.result
    return SimpleNamespace(
        image=image, mask=mask, ui=out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui
    )


def stacked(ui: dict[str, Any]) -> list[tuple[str | None, bool]]:
    """(name, visible) of the layers Create Layered Image shows its editor, bottom to top."""
    return [(entry["name"], entry["visible"]) for entry in ui["compositor_bboxes"]]


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(0) ** (1 / 2.4) - 0.055)


def eight_bit(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.clamp(0, 1) * 255) / 255


def alphas(run: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The chair's and the cat's alpha [H, W]."""
    return run.fgs[0, ..., 3], run.fgs[1, ..., 3]


# --- Create Layered Image on Decode Layers' document ---------------------------------------


def test_create_layered_image_draws_decode_layers_document(core, run):
    document = run.document
    out = composite(core, document)
    assert document["canvas"] == (SIZE, SIZE)
    # An opaque BG at the bottom: an RGB composite of the image's size, nothing transparent.
    assert out.image.shape == (1, SIZE, SIZE, 3)
    assert out.mask.shape == (1, SIZE, SIZE) and float(out.mask.abs().max()) == 0.0
    assert stacked(out.ui) == [("bg", True), ("chair", True), ("cat", True), ("blended", False)]
    assert [(e["width"], e["height"], e["x"], e["y"]) for e in out.ui["compositor_bboxes"]] == [
        (SIZE, SIZE, 0, 0)
    ] * 4
    assert len(out.ui["compositor_layers"]) == 4  # one preview per layer, for the layer editor

    image = out.image[0]
    chair_a, cat_a = alphas(run)
    front = cat_a >= 1.0
    uncovered = (chair_a <= 0.0) & (cat_a <= 0.0)
    assert int(front.sum()) > 20 and int(uncovered.sum()) > 20, "the test decoder gave no opaque/clear pixels"
    # Where the front layer is opaque the composite is that layer; where no layer covers, BG.
    torch.testing.assert_close(image[front], run.fgs[1, ..., :3][front], atol=EIGHT_BIT, rtol=0)
    torch.testing.assert_close(image[uncovered], run.bg[0][uncovered], atol=EIGHT_BIT, rtol=0)
    # Where only the cat covers, partly: its straight colour over BG by its alpha, in linear
    # light (core's compositor). A premultiplied layer would come out darker here.
    partial = (cat_a > 0.2) & (cat_a < 0.8) & (chair_a <= 0.0)
    assert int(partial.sum()) > 10
    a = eight_bit(cat_a[partial]).unsqueeze(-1)
    fg, bg = (
        srgb_to_linear(eight_bit(run.fgs[1, ..., :3][partial])),
        srgb_to_linear(eight_bit(run.bg[0][partial])),
    )
    torch.testing.assert_close(image[partial], linear_to_srgb(fg * a + bg * (1 - a)), atol=2e-3, rtol=0)

    # The hidden BLENDED item is not drawn: shown, it covers everything.
    shown = copy.copy(document)
    shown["layers"] = [{**item, "visible": True} for item in document["layers"]]
    with_blended = composite(core, shown).image[0]
    torch.testing.assert_close(with_blended, run.blended[0], atol=EIGHT_BIT, rtol=0)
    assert float((image - run.blended[0]).abs().amax()) > 0.1


def test_add_layer_stacks_onto_our_document(core, run):
    base = composite(core, run.document).image
    sticker = torch.zeros(1, 16, 24, 3)
    sticker[..., 1] = 0.8
    on_top = run_node(
        core.AddLayer, layers=run.document, image=sticker, name="sticker", x=8, y=16, z_index=10
    ).result[0]
    assert on_top["canvas"] == run.document["canvas"]  # Add Layer keeps our canvas
    assert on_top["layers"][:4] == run.document["layers"]  # and our items as they are
    out = composite(core, on_top)
    assert stacked(out.ui) == [
        ("bg", True),
        ("chair", True),
        ("cat", True),
        ("blended", False),
        ("sticker", True),
    ]
    assert out.image.shape == base.shape
    torch.testing.assert_close(
        out.image[0, 16:32, 8:32], sticker[0].expand(16, 24, 3), atol=EIGHT_BIT, rtol=0
    )
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[16:32, 8:32] = False
    torch.testing.assert_close(out.image[0][outside], base[0][outside], atol=1e-6, rtol=0)
    # Add Layer's default z_index (0) stacks a new layer right above our BG (stable by z_index).
    default = run_node(core.AddLayer, layers=run.document, image=sticker, name="sticker").result[0]
    assert [name for name, _ in stacked(composite(core, default).ui)] == [
        "bg",
        "sticker",
        "chair",
        "cat",
        "blended",
    ]


# --- Documents made by core's nodes, given to Re-harmonize -----------------------------------


def add_layer(core, image, name, layers=None, **kw):
    kw = kw if layers is None else {**kw, "layers": layers}
    return run_node(core.AddLayer, image=image, name=name, **kw).result[0]


@pytest.fixture(scope="module")
def placed(core, pack, tiny_sdxl, run) -> SimpleNamespace:
    """Re-harmonize given a document built by Add Layer alone: the chair moved 8 px right and
    mirrored, the cat shown at 32 x 32 (half size) at the origin. ``outputs`` are the node's."""
    document = add_layer(core, run.fgs[0:1], "chair", x=8, flip_h=True)
    document = add_layer(core, run.fgs[1:2], "cat", layers=document, width=SIZE // 2, height=SIZE // 2)
    return SimpleNamespace(
        document=document, outputs=run_reharmonize(pack, tiny_sdxl, run.decoded, layers=document)
    )


def test_add_layer_places_our_layers_for_reharmonize(run, placed):
    moved = placed.outputs[0]
    chair = run.decoded.images["fg0"]
    expected = torch.zeros_like(chair)
    expected[:, :, 8:] = torch.flip(chair, (2,))[:, :, : SIZE - 8]  # mirrored in place, then moved
    assert torch.equal(moved.images["fg0"], expected)
    # w/h: the cat is scaled to half size, at the origin.
    cat, half = moved.images["fg1"][0], SIZE // 2
    assert float(cat[half:, :, 3].abs().max()) == 0.0 and float(cat[:, half:, 3].abs().max()) == 0.0
    shrunk = torch.nn.functional.avg_pool2d(run.decoded.images["fg1"][0, ..., 3][None, None], 2)[0, 0]
    assert float((cat[:half, :half, 3] - shrunk).abs().mean()) < 0.1
    assert float((cat[:half, :half, 3] - run.decoded.images["fg1"][0, :half, :half, 3]).abs().mean()) > 0.1
    assert torch.equal(moved.images["bg"], run.decoded.images["bg"])


def test_layers_from_bounding_boxes_places_our_layers_for_reharmonize(core, pack, tiny_sdxl, run):
    boxes = [
        {"x": 0, "y": 8, "width": SIZE, "height": SIZE, "metadata": {"name": "chair"}},
        {"x": 16, "y": 16, "width": SIZE // 2, "height": SIZE // 2, "metadata": {"name": "cat"}},
    ]
    document = run_node(
        core.LayersFromBoundingBoxes, image=run.fgs, bboxes=boxes, canvas_width=SIZE, canvas_height=SIZE
    ).result[0]
    assert [(i["name"], i["x"], i["y"], i.get("w"), i.get("h")) for i in document["layers"]] == [
        ("chair", 0, 8, SIZE, SIZE),
        ("cat", 16, 16, SIZE // 2, SIZE // 2),
    ]
    moved = run_reharmonize(pack, tiny_sdxl, run.decoded, layers=document)[0]
    chair = run.decoded.images["fg0"]
    assert torch.equal(moved.images["fg0"][:, 8:], chair[:, : SIZE - 8])
    assert float(moved.images["fg0"][:, :8, :, 3].abs().max()) == 0.0
    cat = moved.images["fg1"][0, ..., 3]
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[16:48, 16:48] = True
    assert float(cat[~inside].abs().max()) == 0.0 and float(cat[inside].max()) > 0.5


def test_our_own_document_goes_back_into_reharmonize(pack, tiny_sdxl, run):
    """Decode Layers' document as it is (every layer where it already is, BLENDED hidden) is
    accepted and moves nothing: the widgets move the layers."""
    moved = run_reharmonize(pack, tiny_sdxl, run.decoded, layers=run.document, fg1_dx=8)[0]
    cat = run.decoded.images["fg1"]
    assert torch.equal(moved.images["fg1"][:, :, 8:], cat[:, :, : SIZE - 8])
    assert torch.equal(moved.images["fg0"], run.decoded.images["fg0"])


def field_refused(excinfo: pytest.ExceptionInfo, item: str, field: str) -> None:
    message = str(excinfo.value)
    assert f"'{item}'" in message and field in message, (
        f"the refusal should name item {item!r} and field {field!r}: {message}"
    )


@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("mask", {"mask": torch.zeros(1, SIZE, SIZE)}),
        ("opacity", {"opacity": 0.5}),
        ("blend_mode", {"blend_mode": "multiply"}),
        ("rotation", {"rotation": 90.0}),
    ],
)
def test_reharmonize_refuses_what_it_cannot_honour_by_item_and_field(core, pack, tiny_sdxl, run, field, kw):
    document = add_layer(core, run.fgs[1:2], "cat", x=8, **kw)
    assert field in document["layers"][0]  # core's Add Layer wrote the field
    with pytest.raises(ValueError) as excinfo:
        run_reharmonize(pack, tiny_sdxl, run.decoded, layers=document)
    field_refused(excinfo, "cat", field)


def test_reharmonize_refuses_a_mask_from_layers_from_bounding_boxes(core, pack, tiny_sdxl, run):
    boxes = [{"x": 8, "y": 0, "width": 0, "height": 0, "metadata": {"name": "chair"}}]
    document = run_node(
        core.LayersFromBoundingBoxes, image=run.fgs[0:1], bboxes=boxes, mask=torch.zeros(1, SIZE, SIZE)
    ).result[0]
    assert document["layers"][0]["mask"] is not None
    with pytest.raises(ValueError) as excinfo:
        run_reharmonize(pack, tiny_sdxl, run.decoded, layers=document)
    field_refused(excinfo, "chair", "mask")


def test_reharmonize_refuses_an_added_layer_by_its_name(core, pack, tiny_sdxl, run):
    document = add_layer(core, torch.zeros(1, 8, 8, 3), "sticker", layers=run.document, z_index=10)
    with pytest.raises(ValueError, match=r"item 5 is named 'sticker', which names no layer of the bundle"):
        run_reharmonize(pack, tiny_sdxl, run.decoded, layers=document)


# --- Our other documents through Create Layered Image ----------------------------------------


def test_a_reharmonised_bundle_through_create_layered_image(core, run, placed):
    moved, _, _, _, document = placed.outputs
    assert [item["name"] for item in document["layers"]] == ["bg", "effects", "chair", "cat", "blended"]
    out = composite(core, document)
    assert out.image.shape == (1, SIZE, SIZE, 3) and document["canvas"] == (SIZE, SIZE)
    assert stacked(out.ui) == [
        ("bg", True),
        ("effects", True),
        ("chair", True),
        ("cat", True),
        ("blended", False),
    ]
    cat = moved.images["fg1"][0]
    front = cat[..., 3] >= 1.0
    assert int(front.sum()) > 10
    torch.testing.assert_close(out.image[0][front], cat[..., :3][front], atol=EIGHT_BIT, rtol=0)


def test_a_decomposition_through_create_layered_image(core, pack, tiny_sdxl, decoder):
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, SIZE // 8, SIZE // 8, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").movedim(1, -1)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:48, 16:48] = 1.0
    chain = layer_prompt(pack, TinyCLIP(), "a ball", "ball", mask=mask)
    with torch.inference_mode():
        bundle, _ = run_node(
            pack.node("LayerFusionDecompose"), model=tiny_sdxl, fg_weights=tiny_fg_weights(tiny_sdxl),
            vae=tiny_vae(), image=image, layers=chain, bg=make_cond(2), image_prompt=make_cond(3),
            negative=make_cond(4), shared_noise=True, **{**SETTINGS, "steps": 3},
        ).result  # fmt: skip
    decomposed = decode(pack, bundle, decoder)
    out = composite(core, decomposed.document)
    assert decomposed.document["canvas"] == (SIZE, SIZE)
    assert out.image.shape == (1, SIZE, SIZE, 3)
    assert stacked(out.ui) == [("bg", True), ("ball", True), ("blended", False)]
    ball = decomposed.fgs[0]
    front, clear = ball[..., 3] >= 1.0, ball[..., 3] <= 0.0
    assert int(front.sum()) > 10 and int(clear.sum()) > 10
    torch.testing.assert_close(out.image[0][front], ball[..., :3][front], atol=EIGHT_BIT, rtol=0)
    torch.testing.assert_close(out.image[0][clear], decomposed.bg[0][clear], atol=EIGHT_BIT, rtol=0)
