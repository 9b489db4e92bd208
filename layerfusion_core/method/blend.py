"""Attention-output blending (Eq. 1, Eq. 2; for K layers LAYERS.md 1) and BLENDED/BG attention
sharing (METHOD.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..options import SharingMode

AttentionFn = Callable[..., torch.Tensor]
"""attention(q, k, v, heads, mask=None) -> [B, T_q, heads*dim]; mask is an additive bias
broadcastable to [B, heads, T_q, T_k] (ComfyUI's optimized_attention has this signature)."""


def blend_attention(
    a_fg: torch.Tensor, a_blend: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 then Eq. 2 on attention outputs a_* [B, T, C] with masks [B, T].

    A_blend' = M_soft * A_fg + (1 - M_soft) * A_blend
    A_fg'    = M_hard * A_blend' + (1 - M_hard) * A_fg
    Returns (A_fg', A_blend').
    """
    soft = soft.to(a_fg.dtype).unsqueeze(-1)
    hard = hard.to(a_fg.dtype).unsqueeze(-1)
    a_blend_new = torch.lerp(a_blend, a_fg, soft)
    a_fg_new = torch.lerp(a_fg, a_blend_new, hard)
    return a_fg_new, a_blend_new


def visibilities(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, back to front, the part of its mask [B, T] no layer above it covers:
    v_k = m_k * prod_{f > k} (1 - m_f) (LAYERS.md 1). Their sum never exceeds 1."""
    out = []
    cover = torch.ones_like(masks[-1])
    for mask in reversed(masks):
        out.append(mask * cover)
        cover = cover * (1.0 - mask)
    return out[::-1]


def blend_layers(
    a_fgs: list[torch.Tensor], a_blend: torch.Tensor, softs: list[torch.Tensor], hards: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Eq. 1 and Eq. 2 for K FG layers (back to front) and BLENDED (LAYERS.md 1):

    A_blend' = sum_k v_k A_fg_k + (1 - sum_k v_k) A_blend   (v_k: soft visibilities)
    A_fg_k'  = h_k A_blend' + (1 - h_k) A_fg_k              (h_k: hard visibilities)

    so an occluder's content never reaches the layer it covers. K = 1 is ``blend_attention``
    exactly. Returns (A_fg_k' per layer, A_blend')."""
    if len(a_fgs) == 1:
        a_fg, a_blend_new = blend_attention(a_fgs[0], a_blend, softs[0], hards[0])
        return [a_fg], a_blend_new
    dtype = a_blend.dtype
    soft_vis = [v.to(dtype).unsqueeze(-1) for v in visibilities(softs)]
    hard_vis = [h.to(dtype).unsqueeze(-1) for h in visibilities(hards)]
    a_blend_new = (1.0 - sum(soft_vis)) * a_blend
    for v, a_fg in zip(soft_vis, a_fgs, strict=True):
        a_blend_new = a_blend_new + v * a_fg
    return [torch.lerp(a_fg, a_blend_new, h) for a_fg, h in zip(a_fgs, hard_vis, strict=True)], a_blend_new


def blend_into_layers(
    a_fgs: list[torch.Tensor], a_blend: torch.Tensor, hards: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Eq. 2 alone, for a decomposition (LAYERS.md 3.3): A_fg_k' = h_k A_blend + (1 - h_k) A_fg_k
    with h_k the hard visibilities; BLENDED, the image being decomposed, is left as it is."""
    dtype = a_blend.dtype
    hard_vis = [h.to(dtype).unsqueeze(-1) for h in visibilities(hards)]
    return [torch.lerp(a_fg, a_blend, h) for a_fg, h in zip(a_fgs, hard_vis, strict=True)]


def union_mask(masks: list[torch.Tensor]) -> torch.Tensor:
    """1 - prod_k (1 - m_k): where any layer's object is (K = 1: the mask itself)."""
    if len(masks) == 1:
        return masks[0]
    free = torch.ones_like(masks[0])
    for mask in masks:
        free = free * (1.0 - mask)
    return 1.0 - free


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain fused attention with ComfyUI's calling convention ([B, T, heads*dim] in and out)."""
    b, tq, c = q.shape
    d = c // heads
    qh, kh, vh = (x.reshape(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=None if mask is None else mask.to(q.dtype))
    return out.transpose(1, 2).reshape(b, tq, c)


EXCLUDED_KEY_BIAS = -1e4  # exp() of it is 0 in every float type; finite, so fp16 kernels take it


def suppression_bias(hard: torch.Tensor, epsilon: float) -> torch.Tensor:
    """[P, T] hard mask -> [P, T] additive key bias log(1 - M_hard + eps) (~log eps inside the
    object). With eps 0 a key where the mask is exactly 1 is excluded (``EXCLUDED_KEY_BIAS``)."""
    # float32 is exact where it matters: 1 - hard is exact for hard in [0.5, 1] (Sterbenz), so
    # eps is added to an exact 0 inside the object. No float64: Apple's MPS has none.
    return torch.log((1.0 - hard.float()) + epsilon).clamp_min(EXCLUDED_KEY_BIAS)


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A stream's (queries, keys, values), [P, T, C] each."""


def shared_attention(
    blended: QKV,
    bg: QKV,
    heads: int,
    mode: SharingMode,
    hard: torch.Tensor | None = None,
    epsilon: float = 1e-6,
    attention: AttentionFn = sdpa_attention,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of paired BLENDED and BG rows (q, k, v of [P, T, C] each) under a sharing
    mode.

    BLENDED queries attend to [K_blend; K_bg]. BG queries attend to the same keys with the
    BLENDED keys inside the object suppressed (MASKED, needs ``hard`` [P, T]), unmasked
    (BIDIRECTIONAL), or only to their own keys (ONE_DIRECTIONAL). The masked bias is a
    [P, 1, 2T] tensor broadcast over heads and queries. Returns (out_blend, out_bg).
    """
    (q_blend, k_blend, v_blend), (q_bg, k_bg, v_bg) = blended, bg
    mode = SharingMode(mode)
    if mode == SharingMode.OFF:
        return attention(q_blend, k_blend, v_blend, heads), attention(q_bg, k_bg, v_bg, heads)
    k_shared = torch.cat([k_blend, k_bg], dim=1)
    v_shared = torch.cat([v_blend, v_bg], dim=1)
    if mode == SharingMode.ONE_DIRECTIONAL:
        return attention(q_blend, k_shared, v_shared, heads), attention(q_bg, k_bg, v_bg, heads)
    # BLENDED and BG queries see the same keys: one fused call over both.
    pairs = q_blend.shape[0]
    q = torch.cat([q_blend, q_bg], dim=0)
    k, v = k_shared.repeat(2, 1, 1), v_shared.repeat(2, 1, 1)
    mask = None
    if mode == SharingMode.MASKED:
        if hard is None:
            raise ValueError("shared_attention: the masked mode needs the hard mask")
        no_bias = torch.zeros_like(hard, dtype=torch.float32)
        bg_bias = torch.cat([suppression_bias(hard, epsilon), no_bias], dim=1)
        blend_bias = torch.zeros_like(bg_bias)
        mask = torch.cat([blend_bias, bg_bias], dim=0).unsqueeze(1).to(q.dtype)  # [2P, 1, 2T]
    out = attention(q, k, v, heads, mask=mask) if mask is not None else attention(q, k, v, heads)
    return out[:pairs], out[pairs:]
