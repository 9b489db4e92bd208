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
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..formats import Conditioning
from ..layers.prompts import common_token_length
from ..method.streams import Stream, StreamSet

log = logging.getLogger(__name__)

EOS_KEY = "layerfusion_eos_index"
SIZE_KEYS = ("width", "height", "crop_w", "crop_h", "target_width", "target_height")
STACKABLE_KEYS = frozenset({"pooled_output", EOS_KEY, *SIZE_KEYS})


def single_entry(name: str, conditioning: Conditioning) -> tuple[torch.Tensor, dict[str, Any]]:
    """The one entry of a stream's CONDITIONING, (tensor [1, T, C], extras); ValueError naming
    ``name`` for several entries, another shape, or keys that cannot be stacked per stream."""
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


def _stack_rows(entries: list[tuple[str, tuple[torch.Tensor, dict]]], num_images: int) -> Conditioning:
    """One CONDITIONING whose rows are ``entries`` (named, in row order) repeated per image:
    token lengths padded by repetition to their least common multiple (refused, naming each
    entry's length, when that is far beyond the longest), pooled outputs
    stacked alike, the size keys taken from the first entry."""
    widths = {name: t.shape[2] for name, (t, _) in entries}
    if len(set(widths.values())) != 1:
        raise ValueError(f"conditionings have different channel widths: {widths}")
    tokens = common_token_length({name: t.shape[1] for name, (t, _) in entries})
    stacked = torch.cat([repeat_to_tokens(t, tokens) for _, (t, _) in entries], dim=0).repeat(
        num_images, 1, 1
    )
    extras: dict[str, Any] = {}
    pooled = [e.get("pooled_output") for _, (_, e) in entries]
    if any(p is not None for p in pooled):
        missing = [name for (name, _), p in zip(entries, pooled, strict=True) if p is None]
        if missing:
            raise ValueError(f"conditioning of {', '.join(missing)} has no pooled_output while the others do")
        extras["pooled_output"] = torch.cat(pooled, dim=0).repeat(num_images, 1)
    first_name, (_, first) = entries[0]
    for key in SIZE_KEYS:
        if key in first:
            extras[key] = first[key]
        differing = sorted({n for n, (_, e) in entries if key in e and e[key] != first.get(key)})
        if differing:
            log.warning(
                "LayerFusion: %s of %s differs from %s's; using %s's",
                key,
                ", ".join(differing),
                first_name,
                first_name,
            )
    return [[stacked, extras]]


def _entries(
    prompts: Mapping[Stream, Conditioning], streams: tuple[Stream, ...], stream_set: StreamSet
) -> list[tuple[str, tuple[torch.Tensor, dict]]]:
    named = {s: stream_set.name(s) for s in streams}
    checked = {s: single_entry(f"{named[s]} conditioning", prompts[s]) for s in dict.fromkeys(streams)}
    return [(named[s], checked[s]) for s in streams]


def stack_conditionings(
    prompts: Mapping[Stream, Conditioning], stream_set: StreamSet, num_images: int
) -> Conditioning:
    """One positive CONDITIONING whose batch rows follow the stream layout: row ``n * S + s``
    carries stream ``s`` of image ``n``. ``prompts`` has a one-entry conditioning for every
    stream of ``stream_set`` (named by stream in error messages)."""
    return _stack_rows(_entries(prompts, stream_set.streams, stream_set), num_images)


def fg_only_conditioning(
    prompts: Mapping[Stream, Conditioning], stream_set: StreamSet, num_images: int
) -> Conditioning:
    """The positive of the prior pass: the FG streams' rows only, image-major (the layout
    of a ``fg_only`` call), without the EOS key."""
    conditioning = _stack_rows(_entries(prompts, stream_set.fg_streams, stream_set), num_images)
    return [[conditioning[0][0], {k: v for k, v in conditioning[0][1].items() if k != EOS_KEY}]]


def concat_conditionings(parts: list[Conditioning], names: list[str]) -> Conditioning:
    """One entry whose tokens are the parts' tokens one after the other (as ComfyUI's
    ConditioningConcat does), with the last part's pooled output and size keys: the default
    BLENDED prompt of a layered run, "<fg_0>, ..., <fg_K-1>, <bg>" in embedding form."""
    entries = [single_entry(f"{name} conditioning", part) for name, part in zip(names, parts, strict=True)]
    widths = {name: t.shape[2] for name, (t, _) in zip(names, entries, strict=True)}
    if len(set(widths.values())) != 1:
        raise ValueError(f"conditionings have different channel widths: {widths}")
    tokens = torch.cat([t for t, _ in entries], dim=1)
    extras = {k: v for k, v in entries[-1][1].items() if k != EOS_KEY}
    return [[tokens, extras]]


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


def eos_per_stream(
    prompts: Mapping[Stream, Conditioning], stream_set: StreamSet, num_images: int
) -> dict[Stream, torch.Tensor] | None:
    """Per FG stream whose prompt carries one (from our encode nodes), its EOS index for
    every image ([N]); None when none does. A stream without one gets a content prior that
    averages over its prompt's tokens."""
    found = {s: eos_index_of(prompts[s]) for s in stream_set.fg_streams}
    eos = {s: torch.full((num_images,), i, dtype=torch.long) for s, i in found.items() if i is not None}
    return eos or None


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
