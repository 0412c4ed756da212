"""A pure-PyTorch reference of SLA written from docs/SPEC.md alone (dense tensors, token-expanded masks), independent of
the library: the oracle of the Python tests. Differentiable through torch.autograd, so its gradients (in float64)
are the reference gradients of docs/SPEC.md section 5."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch


class RefBlockMap(NamedTuple):
    critical: torch.Tensor  # (B, H, Nq, Nk) bool: key block j is in C_i
    negligible: torch.Tensor  # (B, H, Nq, Nk) bool: key block j is negligible for query block i
    scores: torch.Tensor  # (B, H, Nq, Nk) float64: S_ij


def block_counts(nk: int, topk: float, negligible: float, variant: str) -> tuple[int, int]:
    """T and Tn of docs/SPEC.md 1.4 and 1.6."""
    t = min(max(math.floor(topk * nk), 1), nk)
    tn = 0
    if variant == "complement":
        tn = max(min(math.floor(negligible * nk), nk - t), 0)
    return t, tn


def pooled_scores(q: torch.Tensor, k: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """S_ij = mean(Q block i) . mean(smooth-K block j), partial blocks divided by their real row count. Computed in
    float64 so that the reference ranks the blocks by the exact scores."""
    q = q.double()
    k = k.double()
    k = k - k.mean(dim=2, keepdim=True)

    def pool(x: torch.Tensor, block: int) -> torch.Tensor:
        b, h, length, d = x.shape
        n = -(-length // block)
        padded = x.new_zeros(b, h, n * block, d)
        padded[:, :, :length] = x
        sums = padded.view(b, h, n, block, d).sum(dim=3)
        rows = torch.full((n,), float(block), dtype=x.dtype, device=x.device)
        rows[-1] = length - (n - 1) * block
        return sums / rows[:, None]

    return pool(q, bq) @ pool(k, bk).transpose(-1, -2)


def block_map(q, k, bq, bk, topk, negligible=0.0, variant="global") -> RefBlockMap:
    scores = pooled_scores(q, k, bq, bk)
    nk = scores.shape[-1]
    t, tn = block_counts(nk, topk, negligible, variant)
    # A stable descending sort keeps equal scores in index order: ties go to the lower j.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    critical = torch.zeros_like(scores, dtype=torch.bool)
    critical.scatter_(-1, order[..., :t], True)
    negligible_mask = torch.zeros_like(critical)
    if tn > 0:
        # The smallest Tn scores outside C_i (ties to the lower j, like the critical set).
        masked = scores.masked_fill(critical, math.inf)
        low = torch.sort(masked, dim=-1, stable=True).indices[..., :tn]
        negligible_mask.scatter_(-1, low, True)
    return RefBlockMap(critical, negligible_mask, scores)


def mask_from_lut(lut: torch.Tensor, count: torch.Tensor, nk: int) -> torch.Tensor:
    """(B, H, Nq, Nk) bool from a LUT and its per-row counts (entries past the count are ignored)."""
    b, h, nq, t = lut.shape
    valid = torch.arange(t, device=lut.device)[None, None, None, :] < count[..., None].long()
    mask = torch.zeros(b, h, nq, nk + 1, dtype=torch.bool, device=lut.device)
    # Invalid entries go to a spare column that is dropped.
    mask.scatter_(-1, torch.where(valid, lut.long(), nk), True)
    return mask[..., :nk]


def lut_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted int32 LUT (B, H, Nq, max count) and counts of a block mask; unused entries are 0."""
    count = mask.sum(-1)
    t = int(count.max())
    nk = mask.shape[-1]
    idx = torch.arange(nk, device=mask.device).expand_as(mask)
    keyed = torch.where(mask, idx, nk + idx)  # selected first, each group ascending
    lut = torch.sort(keyed, dim=-1).values[..., :t]
    lut = torch.where(lut < nk, lut, torch.zeros_like(lut))
    return lut.to(torch.int32), count.to(torch.int32)


def expand_blocks(block_mask: torch.Tensor, lq: int, lk: int, bq: int, bk: int) -> torch.Tensor:
    """Token-level mask (B, H, Lq, Lk) of a block mask (B, H, Nq, Nk)."""
    return block_mask.repeat_interleave(bq, dim=2)[:, :, :lq].repeat_interleave(bk, dim=3)[..., :lk]


def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return torch.nn.functional.elu(x) + 1
    if name == "relu":
        return torch.relu(x)
    raise ValueError(name)


def sparse_branch(q, k, v, critical_tokens, scale):
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(~critical_tokens, -math.inf)
    return torch.softmax(s, dim=-1) @ v


def linear_branch(q, k, v, marginal_tokens: Optional[torch.Tensor], phi: str, eps: float):
    """Global variant when marginal_tokens is None, else the complement variant's masked dense formula."""
    fq, fk = feature_map(q, phi), feature_map(k, phi)
    if marginal_tokens is None:
        h = fk.transpose(-1, -2) @ v
        z = fk.sum(dim=-2)
        return (fq @ h) / ((fq * z[:, :, None, :]).sum(-1, keepdim=True) + eps)
    a = (fq @ fk.transpose(-1, -2)) * marginal_tokens
    num = a @ v
    den = a.sum(-1, keepdim=True)
    positive = den > 0
    # Rows with no marginal keys or a zero denominator give 0 (docs/SPEC.md 3); the safe denominator keeps their
    # gradients finite.
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def sla_attention(
    q,
    k,
    v,
    critical: torch.Tensor,
    negligible: Optional[torch.Tensor],
    *,
    bq: int,
    bk: int,
    variant: str = "global",
    phi: str = "softmax",
    scale: Optional[float] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
):
    """O = O_s + O_l W^T + b for (B, H, L, D) inputs and block masks (B, H, Nq, Nk)."""
    lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
    s = 1.0 / math.sqrt(d) if scale is None else scale
    crit_tokens = expand_blocks(critical, lq, lk, bq, bk)
    o_s = sparse_branch(q, k, v, crit_tokens, s)
    if variant == "global":
        o_l = linear_branch(q, k, v, None, phi, eps)
    else:
        marginal = ~critical
        if negligible is not None:
            marginal = marginal & ~negligible
        o_l = linear_branch(q, k, v, expand_blocks(marginal, lq, lk, bq, bk), phi, eps)
    o = o_s
    if weight is not None:
        o = o + o_l @ weight.to(o_l.dtype).transpose(0, 1)
    if bias is not None:
        o = o + bias.to(o.dtype)
    return o, o_s, o_l
