"""Building blocks of the LayerDiffuse-compatible transparent decoder ("UNet1024").

Module and attribute names reproduce the key paths of the published weight files
(``resnets.M.norm1``, ``attentions.M.to_out.0``, ``downsamplers.0.conv``, ...), so
``state_dict()`` matches them one to one. Nothing here takes a time embedding: the
decoder is a plain image-to-image UNet.

Where the published files cannot tell two behaviours apart (scale factors, order of
upsampling and conv), the diffusers ``UNet2DModel`` defaults are used and said so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPS = 4
EPS = 1e-5
HEAD_DIM = 8


def group_norm(channels: int) -> nn.GroupNorm:
    """The decoder's one normalisation: 4 groups, eps 1e-5, affine."""
    return nn.GroupNorm(GROUPS, channels, eps=EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus a shortcut.

    ``[B, in_ch, H, W] -> [B, out_ch, H, W]``. The shortcut is a 1x1 conv only when the
    channel count changes (identity otherwise). The sum is not rescaled: diffusers'
    default ``output_scale_factor`` is 1.0 and no reference overrides it.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SelfAttention(nn.Module):
    """Spatial self-attention over all H*W positions, with a residual add.

    ``[B, C, H, W] -> [B, C, H, W]``; heads = C / 8 (head dim 8). GroupNorm feeds q, k and
    v; the softmax scale is the usual 1/sqrt(head_dim); the residual sum is not rescaled
    (diffusers' ``rescale_output_factor`` default 1.0). ``to_out`` is a list so that its
    linear layer is ``to_out.0`` as in the weight files (diffusers keeps a dropout at 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % HEAD_DIM:
            raise ValueError(f"attention channels must be a multiple of {HEAD_DIM}, got {channels}")
        self.heads = channels // HEAD_DIM
        self.group_norm = group_norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, T, C]

        def split_heads(t: Tensor) -> Tensor:  # [B, T, C] -> [B, heads, T, 8]
            return t.view(b, h * w, self.heads, HEAD_DIM).transpose(1, 2)

        q = split_heads(self.to_q(tokens))
        k = split_heads(self.to_k(tokens))
        v = split_heads(self.to_v(tokens))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, 8]
        out = self.to_out[0](out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1 (diffusers ``Downsample2D`` with padding=1): H -> H/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (diffusers ``Upsample2D`` order): H -> 2H."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """Two resnets (each optionally followed by attention), then an optional downsampler.

    ``forward`` returns the block output and the skips it leaves for the up path: the
    output of every resnet(+attention) and of the downsampler, in that order.
    """

    def __init__(self, in_ch: int, out_ch: int, layers: int, attention: bool, downsample: bool) -> None:
        super().__init__()
        # Registered before ``resnets`` so the state-dict order follows the weight files.
        if attention:
            self.attentions = nn.ModuleList([SelfAttention(out_ch) for _ in range(layers)])
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)]
        )
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample(out_ch)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips: list[Tensor] = []
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if attentions is not None:
                x = attentions[i](x)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """Resnets that each take ``cat(hidden, skip)`` (+ optional attention), then an upsampler.

    ``skip_channels`` lists the channel count of the skip each resnet consumes, in the
    order they are consumed (the most recent skip first). ``forward`` pops that many skips
    from the end of the shared list.
    """

    def __init__(
        self, in_ch: int, out_ch: int, skip_channels: list[int], attention: bool, upsample: bool
    ) -> None:
        super().__init__()
        layers = len(skip_channels)
        if attention:
            self.attentions = nn.ModuleList([SelfAttention(out_ch) for _ in range(layers)])
        self.resnets = nn.ModuleList(
            [ResnetBlock((in_ch if i == 0 else out_ch) + s, out_ch) for i, s in enumerate(skip_channels)]
        )
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(out_ch)])

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1))
            if attentions is not None:
                x = attentions[i](x)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution, channels unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([SelfAttention(channels)])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))
