"""Transparent decoder: exact LayerDiffuse key layout, strict loading, and decode() behaviour.

Behaviour tests use a tiny decoder with the real topology (narrow channels) so they run in
seconds; the real-size model is built on the meta device or decoded once at 64x64.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerfusion_core.models.transparent_vae import (
    TransparentDecoder,
    estimate_memory_bytes,
    expected_state_dict_shapes,
)

MANIFEST = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "reference"
    / "layerdiffuse_transparent_decoder_keys.json"
)
NUM_PARAMS = 104_104_804
TINY_CHANNELS = (8, 8, 8, 16, 16, 16, 16)


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"key manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def manifest_shapes(manifest: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in manifest["keys"].items()}


@pytest.fixture(scope="module")
def manifest_state_dict(manifest_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Random fp16 tensors with the manifest's keys and shapes (as the published files)."""
    gen = torch.Generator().manual_seed(0)
    return {k: (torch.randn(s, generator=gen) * 0.02).half() for k, s in manifest_shapes.items()}


def tiny_decoder(seed: int = 0) -> TransparentDecoder:
    """Real topology, narrow channels; output bias 0.5 keeps most values off the clamp bounds."""
    torch.manual_seed(seed)
    model = TransparentDecoder(TINY_CHANNELS).eval()
    with torch.no_grad():
        model.conv_out.bias.fill_(0.5)
        model.conv_out.weight.mul_(0.5)
    return model


def inputs(batch: int, height: int, width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pixel = torch.rand(batch, 3, height, width, generator=gen)
    latent = torch.randn(batch, 4, height // 8, width // 8, generator=gen)
    return pixel, latent


def test_state_dict_matches_manifest_exactly(manifest: dict, manifest_shapes: dict) -> None:
    with torch.device("meta"):
        model = TransparentDecoder()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(manifest_shapes)) == []
    assert sorted(set(manifest_shapes) - set(ours)) == []
    assert ours == manifest_shapes
    assert len(ours) == manifest["_meta"]["num_tensors"] == 538
    assert sum(p.numel() for p in model.parameters()) == manifest["_meta"]["num_params"] == NUM_PARAMS
    assert expected_state_dict_shapes() == manifest_shapes


def test_manifest_state_dict_loads_strictly(manifest_state_dict: dict) -> None:
    model = TransparentDecoder.from_state_dict(manifest_state_dict)
    assert model.conv_in.weight.dtype == torch.float16
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in manifest_state_dict.items())
    assert not any(p.requires_grad for p in model.parameters())


def test_safetensors_round_trip_fp16(manifest_state_dict: dict, tmp_path: Path) -> None:
    path = tmp_path / "vae_transparent_decoder.safetensors"
    save_file(manifest_state_dict, str(path))
    model = TransparentDecoder.from_state_dict(load_file(str(path)))
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    key = "up_blocks.1.resnets.2.conv1.weight"
    assert torch.equal(model.state_dict()[key], manifest_state_dict[key])


def test_float32_state_dict_gives_float32_decoder(manifest_state_dict: dict) -> None:
    sd = {k: v.float() for k, v in manifest_state_dict.items()}
    assert TransparentDecoder.from_state_dict(sd).conv_out.weight.dtype == torch.float32


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ("missing", "mid_block.attentions.0.to_k.bias"),
        ("unexpected", "mid_block.attentions.0.proj_attn.weight"),
        ("wrong_shape", "up_blocks.2.resnets.0.conv_shortcut.weight"),
    ],
)
def test_bad_state_dict_is_refused_naming_the_key(manifest_state_dict: dict, edit: str, key: str) -> None:
    sd = dict(manifest_state_dict)
    if edit == "missing":
        del sd[key]
    elif edit == "unexpected":
        sd[key] = torch.zeros(512, 512, dtype=torch.float16)
    else:
        sd[key] = torch.zeros(256, 512, 1, 1, dtype=torch.float16)
    with pytest.raises(ValueError, match=re.escape(key)):
        TransparentDecoder.from_state_dict(sd)


def reference_tta(model: TransparentDecoder, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The TTA recipe written out: flip W, rot90 k, pass, clamp, undo, lower median of 8."""
    results = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                p = pixel.flip(3) if flip else pixel
                lt = latent.flip(3) if flip else latent
                y = model(torch.rot90(p, k, (2, 3)), torch.rot90(lt, k, (2, 3))).clamp(0, 1)
                y = torch.rot90(y, -k, (2, 3))
                results.append(y.flip(3) if flip else y)
    stacked = torch.stack(results)
    assert not torch.allclose(stacked[0], stacked[5]), "variants must differ for the test to mean anything"
    ordered = stacked.sort(dim=0).values
    return ordered[3]  # lower of the two middle values of 8


def test_tta_equals_reference_loop() -> None:
    model = tiny_decoder()
    pixel, latent = inputs(2, 64, 128)
    expected = reference_tta(model, pixel, latent)
    got = model.decode(pixel, latent, tta=True, sub_batch=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    plain = model.decode(pixel, latent, tta=False)
    assert not torch.allclose(got, plain)


def test_output_shape_range_and_dtype() -> None:
    model = tiny_decoder()
    pixel, latent = inputs(2, 64, 64)
    out = model.decode(pixel, latent, tta=False)
    assert out.shape == (2, 4, 64, 64)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0


def test_size_not_multiple_of_64_is_padded_and_cropped() -> None:
    model = tiny_decoder()
    pixel, latent = inputs(1, 72, 104)
    out = model.decode(pixel, latent, tta=True)
    assert out.shape == (1, 4, 72, 104)
    padded_pixel = torch.nn.functional.pad(pixel, (0, 24, 0, 56), mode="replicate")
    padded_latent = torch.nn.functional.pad(latent, (0, 3, 0, 7), mode="replicate")
    whole = model.decode(padded_pixel, padded_latent, tta=True)
    torch.testing.assert_close(out, whole[:, :, :72, :104])


@pytest.mark.parametrize("tta", [False, True])
def test_sub_batches_match_full_batch(tta: bool) -> None:
    model = tiny_decoder()
    pixel, latent = inputs(3, 64, 64)
    full = model.decode(pixel, latent, tta=tta, sub_batch=3)
    for sub_batch in (1, 2):
        torch.testing.assert_close(model.decode(pixel, latent, tta=tta, sub_batch=sub_batch), full)


@pytest.mark.parametrize(("tta", "sub_batch", "total"), [(True, 2, 16), (False, 2, 2), (False, 5, 1)])
def test_progress_counts_every_pass(tta: bool, sub_batch: int, total: int) -> None:
    model = tiny_decoder()
    calls: list[tuple[int, int]] = []
    model.decode(*inputs(3, 64, 64), tta=tta, sub_batch=sub_batch, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_fp16_decoder_on_cpu() -> None:
    model = tiny_decoder()
    pixel, latent = inputs(1, 64, 64)
    ref = model.decode(pixel, latent, tta=False)
    half = tiny_decoder().half()
    try:
        out = half.decode(pixel, latent, tta=False)
    except RuntimeError as err:
        if "not implemented" in str(err).lower():
            pytest.skip(f"this torch build lacks a float16 CPU kernel: {err}")
        raise
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)


def test_real_size_random_decoder_decodes_64px() -> None:
    torch.manual_seed(0)
    model = TransparentDecoder().eval()
    pixel, latent = inputs(1, 64, 64)
    out = model.decode(pixel, latent, tta=False)
    assert out.shape == (1, 4, 64, 64)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    ("pixel_shape", "latent_shape", "sub_batch", "message"),
    [
        ((1, 4, 64, 64), (1, 4, 8, 8), 1, "pixel: expected [B, 3, H, W], got [1, 4, 64, 64]"),
        ((1, 3, 64, 64), (1, 16, 8, 8), 1, "latent: expected [B, 4, H/8, W/8], got [1, 16, 8, 8]"),
        ((2, 3, 64, 64), (1, 4, 8, 8), 1, "batch: pixel has 2 images, latent 1"),
        ((1, 3, 64, 64), (1, 4, 8, 16), 1, "pixel size: expected [64, 128]"),
        ((1, 3, 64, 64), (1, 4, 8, 8), 0, "sub_batch: expected an int >= 1, got 0"),
    ],
)
def test_bad_inputs_raise_expected_vs_got(
    pixel_shape: tuple, latent_shape: tuple, sub_batch: int, message: str
) -> None:
    model = tiny_decoder()
    with pytest.raises(ValueError, match=re.escape(message)):
        model.decode(torch.rand(pixel_shape), torch.rand(latent_shape), sub_batch=sub_batch)


def test_constructor_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="block_out_channels"):
        TransparentDecoder((8, 8, 8))


def test_memory_estimate_scales_with_area_batch_and_dtype() -> None:
    one = estimate_memory_bytes(1024, 1024, 1, torch.float16)
    assert estimate_memory_bytes(1024, 1024, 2, torch.float16) == 2 * one
    assert estimate_memory_bytes(1024, 1024, 1, torch.float32) > one
    # 1000 px pads to 1024: same working set.
    assert estimate_memory_bytes(1000, 1000, 1, torch.float16) == one
    # Rough size check: the full-resolution 32-channel activations alone exceed 32 * H * W * 2 bytes.
    assert 32 * 1024 * 1024 * 2 < one < 64 * 2**30
    assert math.isclose(estimate_memory_bytes(512, 512, 1, torch.float16) * 4, one, rel_tol=1e-6)
