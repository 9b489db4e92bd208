"""Stacking the FG, BG and BLENDED conditionings along the batch (COMFYUI.md, batch layout).

A ComfyUI CONDITIONING is a list of ``[tensor [1, T, C], dict]`` entries. We accept one
entry per stream, pad token lengths by repetition to their least common multiple (which
leaves attention unchanged, unlike zero padding), and stack image-major so row
``n * S + s`` carries stream ``s`` of image ``n``.

Also: the EOS index of a prompt, read from the CLIP's own tokenizer (``encode``,
``fg_eos_index``), which the content prior needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..method.streams import StreamRole, StreamSet

log = logging.getLogger(__name__)

EOS_KEY = "layerfusion_eos_index"
SIZE_KEYS = ("width", "height", "crop_w", "crop_h", "target_width", "target_height")
STACKABLE_KEYS = frozenset({"pooled_output", EOS_KEY, *SIZE_KEYS})

Conditioning = list[list[Any]]


def _single_entry(name: str, conditioning: Conditioning) -> tuple[torch.Tensor, dict[str, Any]]:
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(
            f"{name}: expected a CONDITIONING (a non-empty list of entries), got {type(conditioning).__name__}"
        )
    if len(conditioning) != 1:
        raise ValueError(
            f"{name}: expected one conditioning entry, got {len(conditioning)} (combined or concatenated "
            "conditionings cannot be stacked per stream yet; encode one prompt per input)"
        )
    tensor, extras = conditioning[0]
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise ValueError(
            f"{name}: expected a conditioning tensor [1, tokens, channels], got {list(tensor.shape)}"
        )
    unsupported = sorted(k for k in extras if k not in STACKABLE_KEYS)
    if unsupported:
        raise ValueError(
            f"{name}: cannot stack conditioning key(s) {', '.join(unsupported)} per stream yet "
            f"(supported: {', '.join(sorted(STACKABLE_KEYS))}); remove area/mask/ControlNet/hooks/timestep "
            "settings from this input"
        )
    return tensor, extras


def repeat_to_tokens(tensor: torch.Tensor, tokens: int) -> torch.Tensor:
    """[1, T, C] -> [1, tokens, C] by repeating the whole sequence (tokens % T == 0)."""
    return tensor.repeat(1, tokens // tensor.shape[1], 1)


def eos_index_of(conditioning: Conditioning) -> int | None:
    """The FG prompt's global EOS index recorded by our encode node, or None."""
    value = conditioning[0][1].get(EOS_KEY) if conditioning else None
    return None if value is None else int(value)


def stack_conditionings(
    streams: dict[StreamRole, Conditioning],
    stream_set: StreamSet,
    num_images: int,
) -> Conditioning:
    """One positive CONDITIONING whose batch rows follow the stream layout.

    ``streams`` maps FG, BG (and BLENDED when the stream set has it) to one-entry
    conditionings, named by role in error messages.
    """
    roles = [s.role for s in stream_set.streams]
    entries = {
        role: _single_entry(f"{role.value} conditioning", streams[role]) for role in dict.fromkeys(roles)
    }
    widths = {role: t.shape[2] for role, (t, _) in entries.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(
            f"conditionings have different channel widths: { {r.value: w for r, w in widths.items()} }"
        )
    tokens = math.lcm(*(t.shape[1] for t, _ in entries.values()))
    rows = [repeat_to_tokens(entries[role][0], tokens) for role in roles]
    stacked = torch.cat(rows, dim=0).repeat(num_images, 1, 1)

    fg_extras = entries[StreamRole.FG][1]
    extras: dict[str, Any] = {}
    pooled = [entries[role][1].get("pooled_output") for role in roles]
    if any(p is not None for p in pooled):
        if any(p is None for p in pooled):
            missing = [role.value for role, p in zip(roles, pooled, strict=True) if p is None]
            raise ValueError(f"conditioning of {', '.join(missing)} has no pooled_output while the others do")
        extras["pooled_output"] = torch.cat(pooled, dim=0).repeat(num_images, 1)
    for key in SIZE_KEYS:
        if key in fg_extras:
            extras[key] = fg_extras[key]
        differing = [r.value for r, (_, e) in entries.items() if key in e and e[key] != fg_extras.get(key)]
        if differing:
            log.warning(
                "LayerFusion: %s of %s differs from the FG conditioning; using FG's",
                key,
                ", ".join(differing),
            )
    return [[stacked, extras]]


def fg_only_conditioning(fg: Conditioning, num_images: int) -> Conditioning:
    """The FG conditioning at batch ``num_images`` (the prior pass's positive)."""
    tensor, extras = _single_entry("fg conditioning", fg)
    out = {k: v for k, v in extras.items() if k != EOS_KEY}
    if "pooled_output" in out:
        out["pooled_output"] = out["pooled_output"].repeat(num_images, 1)
    return [[tensor.repeat(num_images, 1, 1), out]]


def check_negative(negative: Conditioning) -> None:
    """Refuse negative entries that ComfyUI would evaluate on a cropped grid (``area``, or a
    mask with ``set_area_to_bounds``): blending and masked sharing work on the whole token
    grid of every row of a call."""
    if not isinstance(negative, list) or not negative:
        raise ValueError(
            f"negative: expected a CONDITIONING (a non-empty list of entries), got {type(negative).__name__}"
        )
    for number, entry in enumerate(negative, 1):
        extras = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
        if "area" in extras or extras.get("set_area_to_bounds"):
            key = "area" if "area" in extras else "set_area_to_bounds"
            raise ValueError(
                f"negative: entry {number} of {len(negative)} has {key} (ConditioningSetArea, or SetMask "
                "with set_area_to_bounds): a negative restricted to part of the image cannot be used with "
                "LayerFusion's blending yet; remove the area from the negative (a full-size mask works)"
            )


def eos_per_image(fg: Conditioning, num_images: int) -> torch.Tensor | None:
    index = eos_index_of(fg)
    return None if index is None else torch.full((num_images,), index, dtype=torch.long)


def check_roles(streams: dict[StreamRole, Conditioning], required: Sequence[StreamRole]) -> None:
    missing = [r.value for r in required if streams.get(r) is None]
    if missing:
        raise ValueError(f"missing conditioning for {', '.join(missing)}")


CLIP_WINDOW = 77


def eos_index_from_windows(windows: Sequence[Sequence[Any]], end_token: int) -> int | None:
    """Global index of the prompt's first end-of-text token in the context tokens.

    ``windows``: the tokenizer's 77-token windows of (token, weight[, word id]) tuples. A
    long prompt spans several windows and the EOS sits in the last one: the index is
    77 * (windows - 1) + its position there. None when no end token is found.
    """
    if not windows:
        return None
    last = windows[-1]
    for position, item in enumerate(last):
        token = item[0] if isinstance(item, (tuple, list)) else item
        if position > 0 and isinstance(token, int) and token == end_token:
            return CLIP_WINDOW * (len(windows) - 1) + position
    return None


DEFAULT_END_TOKEN = 49407  # CLIP's <|endoftext|>


def _end_token(clip, stream: str) -> int:
    tokenizer = getattr(getattr(clip, "tokenizer", None), f"clip_{stream}", None)
    return int(getattr(tokenizer, "end_token", None) or DEFAULT_END_TOKEN)


def fg_eos_index(clip, tokens: dict) -> int | None:
    """EOS index of the FG prompt: from the CLIP-G windows (SDXL's context follows its
    token positions), else CLIP-L."""
    for stream in ("g", "l"):
        if stream in tokens:
            return eos_index_from_windows(tokens[stream], _end_token(clip, stream))
    return None


def encode(clip, text: str) -> tuple[list, dict]:
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens), tokens


def encode_with_eos(clip, text: str) -> list:
    """``text`` encoded by ``clip``, its entries carrying the prompt's EOS index (for the
    content prior); without one found, a warning and the plain conditioning."""
    conditioning, tokens = encode(clip, text)
    eos = fg_eos_index(clip, tokens)
    if eos is None:
        log.warning("LayerFusion: no end-of-text token found in the tokens of %r", text[:60])
        return conditioning
    return [[t, {**d, EOS_KEY: eos}] for t, d in conditioning]


def encode_triplet(clip, fg_text: str, bg_text: str, blended_text: str) -> tuple[list, list, list]:
    """The FG (with its EOS index), BG and BLENDED conditionings; an empty BLENDED text
    becomes '<fg_text>, <bg_text>'."""
    blended_text = blended_text.strip() or f"{fg_text.strip()}, {bg_text.strip()}"
    return encode_with_eos(clip, fg_text), encode(clip, bg_text)[0], encode(clip, blended_text)[0]
