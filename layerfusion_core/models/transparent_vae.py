"""LayerDiffuse-compatible transparent VAE decoder ("UNet1024"), pure torch.

Turns the ordinary VAE decode of a foreground latent plus that raw latent into straight
RGBA. The module tree reproduces the key paths of ``vae_transparent_decoder.safetensors``
and ``ld_diffusers_sdxl_vae_transparent_decoder.safetensors`` (538 tensors, 104,104,804
parameters), so those files load unchanged and strictly. Architecture: LAYERDIFFUSE.md,
section "Transparent VAE decoder"; key manifest:
``shared/reference/layerdiffuse_transparent_decoder_keys.json``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import LATENT_CELL
from .transparent_vae_blocks import DownBlock, MidBlock, UpBlock, group_norm

logger = logging.getLogger(__name__)

# Architecture table (the published UNet1024 configuration).
BLOCK_OUT_CHANNELS: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 512)
DOWN_ATTENTION: tuple[bool, ...] = (False, False, False, False, True, True, True)
DOWN_LAYERS = 2
UP_LAYERS = 3
LATENT_BLOCK = 3  # latent features join the hidden state right before this down block (H/8)
PIXEL_CHANNELS = 3
LATENT_CHANNELS = 4
OUT_CHANNELS = 4
SIZE_MULTIPLE = 2 ** (len(BLOCK_OUT_CHANNELS) - 1)  # six stride-2 downsamplers -> 64

# Test-time augmentation: (flip W first?, then rot90 k times over (H, W)).
TTA_TRANSFORMS: tuple[tuple[bool, int], ...] = tuple((flip, k) for flip in (False, True) for k in range(4))
ProgressFn = Callable[[int, int], None]


def pixel_size(latent_hw) -> list[int]:
    """[H, W] of the image a latent of spatial size ``latent_hw`` (h, w) decodes to."""
    return [int(latent_hw[0]) * LATENT_CELL, int(latent_hw[1]) * LATENT_CELL]


class TransparentDecoder(nn.Module):
    """UNet mapping (pixel [B, 3, H, W], latent [B, 4, H/8, W/8]) to RGBA [B, 4, H, W].

    ``block_out_channels`` exists so tests can build a tiny decoder with the same topology;
    real weight files need the default.
    """

    def __init__(self, block_out_channels: Sequence[int] = BLOCK_OUT_CHANNELS) -> None:
        super().__init__()
        chs = tuple(int(c) for c in block_out_channels)
        if len(chs) != len(BLOCK_OUT_CHANNELS) or any(c <= 0 or c % 8 for c in chs):
            raise ValueError(
                f"block_out_channels: expected {len(BLOCK_OUT_CHANNELS)} positive multiples of 8, got {chs}"
            )
        self.block_out_channels = chs
        self.conv_in = nn.Conv2d(PIXEL_CHANNELS, chs[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(LATENT_CHANNELS, chs[LATENT_BLOCK - 1], 1)

        # Skips as a diffusers UNet2D leaves them: conv_in's output, then every resnet's
        # and every downsampler's output. Their channel counts fix each up resnet's input.
        skip_channels = [chs[0]]
        down = []
        for i, out_ch in enumerate(chs):
            last = i == len(chs) - 1
            in_ch = chs[max(i - 1, 0)]
            down.append(DownBlock(in_ch, out_ch, DOWN_LAYERS, DOWN_ATTENTION[i], downsample=not last))
            skip_channels += [out_ch] * (DOWN_LAYERS + (0 if last else 1))
        self.down_blocks = nn.ModuleList(down)

        # Registered before mid_block to follow the weight files' key order.
        up = []
        rev = chs[::-1]
        for i, out_ch in enumerate(rev):
            consumed = [skip_channels.pop() for _ in range(UP_LAYERS)]
            in_ch = rev[max(i - 1, 0)]
            attention = DOWN_ATTENTION[::-1][i]
            up.append(UpBlock(in_ch, out_ch, consumed, attention, upsample=i < len(rev) - 1))
        self.up_blocks = nn.ModuleList(up)
        if skip_channels:
            raise RuntimeError(f"internal: {len(skip_channels)} skips left unconsumed")
        self.mid_block = MidBlock(chs[-1])
        self.conv_norm_out = group_norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], OUT_CHANNELS, 3, padding=1)

    def forward(self, pixel: Tensor, latent: Tensor) -> Tensor:
        """One raw pass: pixel [B, 3, H, W], latent [B, 4, H/8, W/8] -> [B, 4, H, W] (unclipped).

        H and W must be multiples of 64.
        """
        x = self.conv_in(pixel)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            if i == LATENT_BLOCK:
                # After the H/8 skip was stored: the skip path never sees the latent.
                x = x + self.latent_conv_in(latent)
            x, block_skips = block(x)
            skips += block_skips
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> TransparentDecoder:
        """Build a decoder from a LayerDiffuse state dict, checked strictly.

        Raises ValueError naming missing, unexpected and mis-shaped keys. The decoder's
        dtype is the state dict's floating dtype (float32 if it mixes several); its
        device is the tensors' device. Tensors already in that dtype are used as they
        are, not copied.
        """
        check_state_dict(sd)
        dtypes = {t.dtype for t in sd.values()}
        dtype = next(iter(dtypes)) if len(dtypes) == 1 else torch.float32
        if len(dtypes) > 1:
            logger.warning("transparent decoder state dict mixes dtypes %s; loading as float32", dtypes)
        with torch.device("meta"):
            model = cls()
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def decode(
        self,
        pixel: Tensor,
        latent: Tensor,
        tta: bool = True,
        sub_batch: int = 1,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """RGBA from a foreground: pixel [B, 3, H, W] in 0..1, latent [B, 4, H/8, W/8] (raw).

        Returns float32 [B, 4, H, W] in [0, 1] on ``pixel``'s device: channel 0 alpha,
        1..3 straight RGB. H and W are padded to multiples of 64 by edge replication (pixel
        and latent alike, the latent by 1/8 of the pixel padding, on the bottom and right)
        and cropped back. With ``tta`` each sub-batch runs the 8 flip/rot90 variants and
        takes the per-pixel lower median. ``progress(done, total)`` follows every pass.
        """
        _validate_inputs(pixel, latent, sub_batch)
        param = self.conv_in.weight
        height, width = pixel.shape[-2:]
        pixel, latent = pad_to_multiple(pixel, latent, SIZE_MULTIPLE)
        transforms = TTA_TRANSFORMS if tta else ((False, 0),)
        starts = range(0, pixel.shape[0], sub_batch)
        total = len(starts) * len(transforms)
        done = 0
        outputs = []
        with torch.no_grad():
            for start in starts:
                px = pixel[start : start + sub_batch].to(param.device, param.dtype)
                lt = latent[start : start + sub_batch].to(param.device, param.dtype)
                results = []
                for flip, k in transforms:
                    y = self(apply_transform(px, flip, k), apply_transform(lt, flip, k))
                    results.append(undo_transform(y.clamp(0.0, 1.0), flip, k).float())
                    done += 1
                    if progress is not None:
                        progress(done, total)
                merged = results[0] if len(results) == 1 else torch.stack(results).median(dim=0).values
                outputs.append(merged[:, :, :height, :width].to(pixel.device))
        return torch.cat(outputs)


def check_state_dict(sd: Mapping[str, Tensor]) -> None:
    """Raise ValueError if ``sd`` lacks, adds or mis-shapes any decoder key."""
    not_float = [k for k, v in sd.items() if not (isinstance(v, Tensor) and v.is_floating_point())]
    if not_float:
        raise ValueError(f"state dict: expected floating-point tensors, got others at {not_float[:10]}")
    expected = expected_state_dict_shapes()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k}: expected {expected[k]}, got {tuple(sd[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    problems = [
        f"{len(items)} {label}: {', '.join(items[:10])}{', ...' if len(items) > 10 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if items
    ]
    if problems:
        raise ValueError("not a LayerDiffuse transparent decoder state dict: " + "; ".join(problems))


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = TransparentDecoder()
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the real decoder's state dict, in its order (built on the meta device)."""
    return dict(_expected_shapes())


def apply_transform(x: Tensor, flip: bool, k: int) -> Tensor:
    """TTA forward transform on [B, C, H, W]: flip W (if ``flip``), then rot90 ``k`` over (H, W)."""
    # rot90 returns a transposed view; convs on it are several times slower than on a copy.
    return torch.rot90(x.flip(3) if flip else x, k, dims=(2, 3)).contiguous()


def undo_transform(x: Tensor, flip: bool, k: int) -> Tensor:
    """Inverse of :func:`apply_transform`: rot90 ``-k``, then flip W."""
    x = torch.rot90(x, -k, dims=(2, 3))
    return x.flip(3) if flip else x


def pad_to_multiple(pixel: Tensor, latent: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Replicate-pad pixel [B, 3, H, W] bottom/right to multiples of ``multiple``, latent alike.

    Replication works at any size (reflection needs the pad to be smaller than the image)
    and keeps the padded border close to the real edge, which the crop then removes.
    """
    pad_h = -pixel.shape[2] % multiple
    pad_w = -pixel.shape[3] % multiple
    if not (pad_h or pad_w):
        return pixel, latent
    pixel = F.pad(pixel, (0, pad_w, 0, pad_h), mode="replicate")
    latent = F.pad(latent, (0, pad_w // LATENT_CELL, 0, pad_h // LATENT_CELL), mode="replicate")
    return pixel, latent


def _validate_inputs(pixel: Tensor, latent: Tensor, sub_batch: int) -> None:
    for name, t in (("pixel", pixel), ("latent", latent)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if pixel.ndim != 4 or pixel.shape[1] != PIXEL_CHANNELS:
        raise ValueError(f"pixel: expected [B, {PIXEL_CHANNELS}, H, W], got {list(pixel.shape)}")
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"latent: expected [B, {LATENT_CHANNELS}, H/8, W/8], got {list(latent.shape)}")
    if pixel.shape[0] != latent.shape[0]:
        raise ValueError(f"batch: pixel has {pixel.shape[0]} images, latent {latent.shape[0]}")
    if pixel.shape[0] == 0:
        raise ValueError("batch: expected at least one image, got 0")
    expected = pixel_size(latent.shape[2:])
    if list(pixel.shape[2:]) != expected or 0 in expected:
        raise ValueError(
            f"pixel size: expected {expected} (8 x latent size {list(latent.shape[2:])}), "
            f"got {list(pixel.shape[2:])}"
        )
    if isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1:
        raise ValueError(f"sub_batch: expected an int >= 1, got {sub_batch!r}")


def estimate_memory_bytes(
    height: int,
    width: int,
    batch: int,
    dtype: torch.dtype,
    block_out_channels: Sequence[int] = BLOCK_OUT_CHANNELS,
) -> int:
    """Rough working memory of one ``decode`` pass over ``batch`` images (weights excluded).

    Derived from activation sizes at the padded size: all skips held at once, plus the
    largest resnet working set (input, normalised/activated copy, conv outputs: about
    3 x in + 2 x out channels at that level), plus the float32 TTA results (8 x 4 channels)
    and the padded float32 inputs. Assumes a fused attention kernel (no [T, T] matrix,
    as torch's SDPA picks on CUDA); CPU conv workspaces are not counted.
    """
    chs = tuple(block_out_channels)
    ph = height + (-height % SIZE_MULTIPLE)
    pw = width + (-width % SIZE_MULTIPLE)
    pixels = ph * pw
    skips = float(chs[0])  # per full-resolution pixel
    work = 0.0
    for level, out_ch in enumerate(chs):
        in_ch = chs[max(level - 1, 0)]
        skips += DOWN_LAYERS * out_ch / 4**level
        if level < len(chs) - 1:
            skips += out_ch / 4 ** (level + 1)
        # The widest up resnet at this level reads cat(hidden, skip): at most 2 x the wider width.
        up_in = out_ch + max(in_ch, out_ch, chs[min(level + 1, len(chs) - 1)])
        work = max(work, (3 * max(in_ch, up_in) + 2 * out_ch) / 4**level)
    element_size = torch.empty((), dtype=dtype).element_size()
    activations = (skips + work) * element_size
    fixed = (len(TTA_TRANSFORMS) * OUT_CHANNELS + PIXEL_CHANNELS + LATENT_CHANNELS / 64) * 4
    return int(batch * pixels * (activations + fixed))
