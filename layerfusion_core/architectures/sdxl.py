"""Our own table of an SDXL-style UNet's transformer blocks.

Written from the layout of SDXL (COMFYUI.md, LAYERDIFFUSE.md): transformers at input
blocks 4, 5 (640 ch, depth 2) and 7, 8 (1280 ch, depth 10), the middle block (depth 10) and
output blocks 0-2 (1280 ch, depth 10) and 3-5 (640 ch, depth 2); 64-dim heads; text
context 2048. The same builder derives the table of any UNet config of this family (the
tiny test models), so loaders and hooks never hard-code block lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..options import BlockKey

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTIONS = ("attn1", "attn2")


@dataclass(frozen=True)
class TransformerBlock:
    key: BlockKey  # ComfyUI's replace key, e.g. ("output", 5, 1)
    ldm_path: str  # module path under diffusion_model, e.g. "output_blocks.5.1.transformer_blocks.1"
    diffusers_path: str  # e.g. "up_blocks.1.attentions.2.transformer_blocks.1"
    channels: int
    heads: int
    context_dim: int

    def projection_shape(self, attention: str, projection: str) -> tuple[int, int]:
        """[out, in] of one attention projection weight."""
        reads_context = attention == "attn2" and projection in ("to_k", "to_v")
        return (self.channels, self.context_dim if reads_context else self.channels)


@dataclass(frozen=True)
class Projection:
    block: TransformerBlock
    attention: str  # "attn1" | "attn2"
    name: str  # one of PROJECTIONS

    @property
    def ldm_path(self) -> str:
        return f"{self.block.ldm_path}.{self.attention}.{self.name}"

    @property
    def diffusers_path(self) -> str:
        return f"{self.block.diffusers_path}.{self.attention}.{self.name}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.block.projection_shape(self.attention, self.name)


@dataclass(frozen=True)
class UNetLayout:
    name: str
    blocks: tuple[TransformerBlock, ...]

    @cached_property
    def projections(self) -> tuple[Projection, ...]:
        return tuple(Projection(b, a, p) for b in self.blocks for a in ATTENTIONS for p in PROJECTIONS)

    @cached_property
    def by_key(self) -> dict[BlockKey, TransformerBlock]:
        return {b.key: b for b in self.blocks}

    @cached_property
    def by_ldm_path(self) -> dict[str, Projection]:
        return {p.ldm_path: p for p in self.projections}

    @cached_property
    def by_diffusers_path(self) -> dict[str, Projection]:
        return {p.diffusers_path: p for p in self.projections}

    @property
    def last_block(self) -> TransformerBlock:
        """The UNet's last transformer block: where the structure prior is read by default."""
        return self.blocks[-1]


@dataclass(frozen=True)
class UNetShape:
    """What decides where a UNet of ComfyUI's openaimodel family has its transformer blocks.

    ``transformer_depth`` has one entry per input res-block (level-major);
    ``transformer_depth_output`` one per output res-block, consumed from the end, as the
    UNet builds its decoder deepest level first."""

    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: Sequence[int]
    transformer_depth: Sequence[int]
    transformer_depth_output: Sequence[int]
    transformer_depth_middle: int
    context_dim: int
    num_head_channels: int = 64
    num_heads: int = -1


def build_layout(name: str, shape: UNetShape) -> UNetLayout:
    """Transformer blocks of a UNet of ``shape``, in execution order."""
    model_channels, channel_mult, num_res_blocks = (
        shape.model_channels,
        shape.channel_mult,
        shape.num_res_blocks,
    )
    context_dim, num_head_channels, num_heads = shape.context_dim, shape.num_head_channels, shape.num_heads
    transformer_depth, transformer_depth_output = shape.transformer_depth, shape.transformer_depth_output
    transformer_depth_middle = shape.transformer_depth_middle

    def heads_for(ch: int) -> int:
        return ch // num_head_channels if num_heads == -1 else num_heads

    blocks: list[TransformerBlock] = []
    depths_in = list(transformer_depth)
    input_id = 1
    for level, mult in enumerate(channel_mult):
        ch = model_channels * mult
        for res in range(num_res_blocks[level]):
            depth = depths_in.pop(0)
            for j in range(depth):
                blocks.append(
                    TransformerBlock(
                        ("input", input_id, j),
                        f"input_blocks.{input_id}.1.transformer_blocks.{j}",
                        f"down_blocks.{level}.attentions.{res}.transformer_blocks.{j}",
                        ch,
                        heads_for(ch),
                        context_dim,
                    )
                )
            input_id += 1
        if level != len(channel_mult) - 1:
            input_id += 1  # the downsampler

    mid_ch = model_channels * channel_mult[-1]
    blocks.extend(
        TransformerBlock(
            ("middle", 0, j),
            f"middle_block.1.transformer_blocks.{j}",
            f"mid_block.attentions.0.transformer_blocks.{j}",
            mid_ch,
            heads_for(mid_ch),
            context_dim,
        )
        for j in range(transformer_depth_middle)
    )

    depths_out = list(transformer_depth_output)
    output_id = 0
    for up_index, (level, mult) in enumerate(reversed(list(enumerate(channel_mult)))):
        ch = model_channels * mult
        for res in range(num_res_blocks[level] + 1):
            depth = depths_out.pop()
            blocks.extend(
                TransformerBlock(
                    ("output", output_id, j),
                    f"output_blocks.{output_id}.1.transformer_blocks.{j}",
                    f"up_blocks.{up_index}.attentions.{res}.transformer_blocks.{j}",
                    ch,
                    heads_for(ch),
                    context_dim,
                )
                for j in range(depth)
            )
            output_id += 1
    return UNetLayout(name, tuple(blocks))


def layout_from_unet_config(unet_config: dict[str, Any], name: str = "model") -> UNetLayout:
    """The table of a ComfyUI ``unet_config`` (model.model_config.unet_config)."""
    levels = len(unet_config["channel_mult"])
    num_res = unet_config["num_res_blocks"]
    if isinstance(num_res, int):
        num_res = [num_res] * levels
    depth = unet_config.get("transformer_depth", [0] * sum(num_res))
    if isinstance(depth, int):
        depth = [depth] * sum(num_res)
    depth_out = unet_config.get("transformer_depth_output", [0] * sum(n + 1 for n in num_res))
    shape = UNetShape(
        unet_config["model_channels"],
        unet_config["channel_mult"],
        num_res,
        depth,
        depth_out,
        unet_config.get("transformer_depth_middle", 0) or 0,
        unet_config["context_dim"],
        unet_config.get("num_head_channels", 64),
        unet_config.get("num_heads", -1),
    )
    return build_layout(name, shape)


SDXL_SHAPE = UNetShape(
    model_channels=320,
    channel_mult=(1, 2, 4),
    num_res_blocks=(2, 2, 2),
    transformer_depth=(0, 0, 2, 2, 10, 10),
    transformer_depth_output=(0, 0, 0, 2, 2, 2, 10, 10, 10),
    transformer_depth_middle=10,
    context_dim=2048,
    num_head_channels=64,
)
SDXL = build_layout("SDXL", SDXL_SHAPE)
"""SDXL's 70 transformer blocks (560 attention projections)."""
