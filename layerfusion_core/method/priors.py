"""Structure prior, content prior, masks, prior resizing and orientation (METHOD.md).

All probability maps are computed in float32, whatever the activations' dtype.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..options import PriorOrientation, SparsityFormula

log = logging.getLogger(__name__)

EOS_FALLBACK_COLUMNS = slice(1, 77)  # first window without BOS (the attention sink)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise [B, T] over T per row; a row whose range is below 1e-6 of its
    largest magnitude (a flat map) becomes zeros."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    span = hi - lo
    scale = x.abs().amax(dim=-1, keepdim=True)
    flat = span <= 1e-6 * scale
    out = (x - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, torch.zeros_like(out), out)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, h*d] -> [B, h, T, d] in float32."""
    b, t, c = x.shape
    if c % heads:
        raise ValueError(f"channels {c} are not divisible by heads {heads}")
    return x.float().reshape(b, t, heads, c // heads).transpose(1, 2)


def sparsity_score(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    chunk_size: int = 1024,
    formula: SparsityFormula = SparsityFormula.SUM_OF_SQUARES,
) -> torch.Tensor:
    """Per-query sparsity of the head-mean self-attention map, [B, T] (high = sparse row).

    q, k: [B, T, heads*dim]. m = mean over heads of softmax(q_h k_h^T / sqrt(dim)) is never
    materialised whole: query rows are processed in chunks and heads accumulated into one
    [B, chunk, T_k] buffer, so memory is O(B * chunk * T_k).
    """
    qh, kh = _heads(q, heads), _heads(k, heads)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    kh_t = kh.transpose(-1, -2)
    formula = SparsityFormula(formula)
    scores = []
    for start in range(0, qh.shape[2], chunk_size):
        q_chunk = qh[:, :, start : start + chunk_size]
        mean = None
        for h in range(heads):
            probs = torch.softmax(torch.matmul(q_chunk[:, h], kh_t[:, h]) * scale, dim=-1)
            mean = probs if mean is None else mean.add_(probs)
            del probs
        mean.div_(heads)
        if formula == SparsityFormula.SUM_OF_SQUARES:
            scores.append(mean.square().sum(dim=-1))
        else:
            scores.append(torch.special.xlogy(mean, mean).sum(dim=-1))
    return torch.cat(scores, dim=1)


def orient(normalised_sparsity: torch.Tensor, orientation: PriorOrientation) -> torch.Tensor:
    """minmax(s) -> s': DENSE gives 1 - minmax(s) (dense rows high), SPARSE gives minmax(s)."""
    orientation = PriorOrientation(orientation)
    if orientation == PriorOrientation.AUTO:
        raise ValueError("orient: AUTO must be resolved to dense or sparse first (OrientationVote)")
    if orientation == PriorOrientation.DENSE:
        return 1.0 - normalised_sparsity
    return normalised_sparsity


def structure_prior(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    chunk_size: int = 1024,
    formula: SparsityFormula = SparsityFormula.SUM_OF_SQUARES,
    orientation: PriorOrientation = PriorOrientation.DENSE,
) -> torch.Tensor:
    """Structure prior s' [B, T] from self-attention q, k [B, T, heads*dim].

    Default: s' = 1 - minmax_T(sum_j m_ij^2), float32.
    """
    return orient(minmax(sparsity_score(q, k, heads, chunk_size, formula)), orientation)


def content_prior(
    q: torch.Tensor,
    k_text: torch.Tensor,
    heads: int,
    eos_index: int | torch.Tensor | None,
    check_range: bool = True,
) -> torch.Tensor:
    """Content confidence prior c [B, T]: head-mean cross-attention probability of the EOS token.

    q: [B, T, heads*dim]; k_text: [B, L, heads*dim]; eos_index: int, LongTensor [B] (a
    global index into the L context tokens), or None for the fallback (mean over columns
    1..76 of the first window). ``check_range``: refuse an index outside the L tokens (a
    check that reads the index back from its device; a run checks its indices once, when it
    is prepared, and passes False).

    One batched product over the heads gives the logits [B, heads, T, L] (float32, the only
    buffer of that size); each row's log-normaliser (logsumexp over the L tokens) turns the
    wanted column(s) into probabilities, so no probability map is written.
    """
    qh, kh = _heads(q, heads), _heads(k_text, heads)
    b, _, t, d = qh.shape
    length = kh.shape[2]
    if eos_index is None:
        if not range(length)[EOS_FALLBACK_COLUMNS]:
            raise ValueError(f"content_prior: context of {length} tokens has no columns after BOS")
    else:
        eos = torch.as_tensor(eos_index, dtype=torch.long, device=q.device).reshape(-1).expand(b)
        if check_range and ((eos < 0).any() or (eos >= length).any()):
            raise ValueError(f"content_prior: eos_index {eos.tolist()} outside the {length} context tokens")
    logits = torch.matmul(qh, kh.transpose(-1, -2)).mul_(1.0 / math.sqrt(d))  # [B, h, T, L]
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, h, T, 1]
    if eos_index is None:
        window = logits[..., EOS_FALLBACK_COLUMNS]
        probs = window.sub_(log_norm).exp_().mean(dim=-1)
    else:
        column = logits.gather(-1, eos.view(b, 1, 1, 1).expand(b, heads, t, 1))
        probs = column.sub_(log_norm).exp_().squeeze(-1)
    return probs.mean(dim=1)


def blend_masks(
    structure: torch.Tensor,
    content: torch.Tensor,
    coefficient: float = 10.0,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft, hard) [B, T]: soft = minmax_T(structure * content); hard = sigmoid(k (soft - tau))."""
    soft = minmax(structure.float() * content.float())
    hard = torch.sigmoid(coefficient * (soft - threshold))
    return soft, hard


def resize_prior(prior: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a [B, h*w] token map between grids of any shape (area interpolation)."""
    if tuple(src_hw) == tuple(dst_hw):
        return prior
    b = prior.shape[0]
    if prior.shape[1] != src_hw[0] * src_hw[1]:
        raise ValueError(f"resize_prior: {prior.shape[1]} tokens do not form a {src_hw[0]}x{src_hw[1]} grid")
    grid = prior.float().reshape(b, 1, *src_hw)
    return F.interpolate(grid, size=tuple(dst_hw), mode="area").reshape(b, -1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row of two [B, T] maps -> [B] (0 where a map is flat)."""
    a = a.float() - a.float().mean(dim=-1, keepdim=True)
    b = b.float() - b.float().mean(dim=-1, keepdim=True)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(dim=-1) / denom.clamp_min(1e-30), torch.zeros_like(denom))


class OrientationVote:
    """Resolves PriorOrientation.AUTO once per run (METHOD.md, priors 1).

    Each observed evaluation votes for the orientation whose s' correlates positively
    with the content prior taken at the same block; after ``evaluations`` votes the
    majority decides (a tie keeps the paper's dense) and the decision never changes.
    ``observe(..., settle=False)`` only keeps the correlation (a tensor, left on its device)
    and ``settle()`` reads it: a run settles between model calls, never inside one.
    """

    def __init__(self, orientation: PriorOrientation, evaluations: int = 1) -> None:
        orientation = PriorOrientation(orientation)
        self._requested = orientation
        self._needed = evaluations
        self._votes: list[PriorOrientation] = []
        self._pending: list[torch.Tensor] = []
        self.decided: PriorOrientation | None = None if orientation == PriorOrientation.AUTO else orientation

    @property
    def observed(self) -> int:
        """Votes cast so far, settled or not."""
        return len(self._votes) + len(self._pending)

    def observe(self, normalised_sparsity: torch.Tensor, content: torch.Tensor, settle: bool = True) -> None:
        if self.decided is not None or self.observed >= self._needed:
            return
        self._pending.append(correlation(1.0 - normalised_sparsity, content).mean())
        if settle:
            self.settle()

    def settle(self) -> None:
        """Count the pending votes (reading their values) and decide once enough are in."""
        pending, self._pending = self._pending, []
        for correlation_value in pending:
            self._count(float(correlation_value))

    def _count(self, dense_corr: float) -> None:
        self._votes.append(PriorOrientation.DENSE if dense_corr >= 0 else PriorOrientation.SPARSE)
        log.debug(
            "LayerFusion orientation vote %d: corr(dense, content) = %.4f", len(self._votes), dense_corr
        )
        if len(self._votes) >= self._needed:
            sparse_votes = self._votes.count(PriorOrientation.SPARSE)
            dense_votes = len(self._votes) - sparse_votes
            self.decided = PriorOrientation.SPARSE if sparse_votes > dense_votes else PriorOrientation.DENSE
            log.info(
                "LayerFusion: structure prior orientation 'auto' decided '%s' (%d dense / %d sparse votes)",
                self.decided.value,
                dense_votes,
                sparse_votes,
            )
