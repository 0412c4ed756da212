"""The block map of docs/SPEC.md section 1 as a Python value: the int32 tables plus the sizes needed to reuse it, and
the sparsity statistics a caller reports."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _options
from ._shapes import ceil_div
from .rules import BlockRule, PerHead


class BlockMap(NamedTuple):
    """Which key blocks each query block attends to, per (batch, head).

    ``lut[b, h, i, :count[b, h, i]]`` are the critical key blocks of query block i, ascending. ``negl_*`` are the
    negligible blocks of the complement variant (empty tensors when there are none); ``inv_*`` are the inverse
    tables the CPU backward pass needs (empty tensors when the map was made without them: for inference, or on
    CUDA, whose backward builds its own and ignores these).
    A NamedTuple so that torch.compile traces it without graph breaks.
    """

    lut: torch.Tensor  # (B, H, Nq, T) int32
    count: torch.Tensor  # (B, H, Nq) int32
    negl_lut: torch.Tensor  # (B, H, Nq, Tn) int32
    negl_count: torch.Tensor  # (B, H, Nq) int32, or (B, H, 0) when Tn == 0
    inv_offset: torch.Tensor  # (B, H, Nk + 1) int32, or (B, H, 0) without inverse
    inv_index: torch.Tensor  # (B, H, Nq * T) int32
    negl_inv_offset: torch.Tensor  # (B, H, Nk + 1) int32, or (B, H, 0)
    negl_inv_index: torch.Tensor  # (B, H, Nq * Tn) int32
    block_q: int
    block_k: int
    k_blocks: int  # Nk

    @property
    def q_blocks(self) -> int:
        return self.lut.shape[2]

    @property
    def real_topk(self) -> int:
        """T: critical key blocks per query block (the public module's `real_topk`)."""
        return self.lut.shape[3]

    @property
    def density(self) -> float:
        """T / Nk: the LUT width over Nk (what the public module's ``return_sparsity=True`` returns). For the
        adaptive rules this is an upper bound; ``mean_density`` is the mean of the row counts."""
        return self.real_topk / self.k_blocks

    @property
    def mean_density(self) -> float:
        """The mean row count over Nk: what the sparse branch really computes (equal to ``density`` for a fixed
        topk map; the adaptive rules of docs/BLOCK_MAP.md give rows fewer entries than the LUT width). Reads the
        counts, so on CUDA it synchronises."""
        return float(self.count.double().mean()) / self.k_blocks

    def head_density(self) -> torch.Tensor:
        """(H,) float64: the mean row count of each head over Nk (averaged over the batch)."""
        return self.count.double().mean(dim=(0, 2)).cpu() / self.k_blocks

    @property
    def sparsity(self) -> float:
        """1 - T / Nk: the fraction of key blocks the sparse branch skips."""
        return 1.0 - self.density

    @property
    def negligible_fraction(self) -> float:
        """Tn / Nk: the fraction of key blocks skipped by both branches (complement variant)."""
        return self.negl_lut.shape[3] / self.k_blocks

    @property
    def has_inverse(self) -> bool:
        return self.inv_offset.shape[-1] > 0

    def tables(self) -> tuple[torch.Tensor, ...]:
        """The eight tables in the order the torch.ops.sla ops take them."""
        return tuple(self[:8])

    def with_inverse(self) -> "BlockMap":
        """This map with its inverse tables filled (needed for the CPU backward pass; the CUDA backward builds its
        own); itself if they already are."""
        if self.has_inverse:
            return self
        inv = torch.ops.sla.invert_block_map(self.lut, self.count, self.negl_lut, self.negl_count, self.k_blocks)
        return self._replace(inv_offset=inv[0], inv_index=inv[1], negl_inv_offset=inv[2], negl_inv_index=inv[3])

    @classmethod
    def from_lut(
        cls,
        lut: torch.Tensor,
        *,
        k_blocks: int,
        block_q: int,
        block_k: int,
        count: Optional[torch.Tensor] = None,
        negl_lut: Optional[torch.Tensor] = None,
        negl_count: Optional[torch.Tensor] = None,
        with_inverse: bool = True,
    ) -> "BlockMap":
        """A caller-supplied map (docs/SPEC.md 1.7): mask reuse across diffusion steps, mask studies, tests.

        ``lut`` is (B, H, Nq, T) int32 with ascending, distinct key-block indices in [0, k_blocks); ``count``
        defaults to T for every row. ``negl_lut``/``negl_count`` give negligible blocks (complement variant).
        """
        _options.check_tensor("lut", lut)
        if lut.dim() != 4:
            raise ValueError(f"lut: expected 4 dimensions (B, H, Nq, T), got {lut.dim()}")
        b, h, nq, t = lut.shape
        if count is None:
            count = torch.full((b, h, nq), t, dtype=torch.int32, device=lut.device)
        if negl_lut is None:
            negl_lut = lut.new_empty((b, h, nq, 0))
            negl_count = lut.new_empty((b, h, 0))
        elif negl_count is None:
            negl_count = torch.full((b, h, nq), negl_lut.shape[3], dtype=torch.int32, device=lut.device)
        empty = lut.new_empty((b, h, 0))
        bmap = cls(lut, count, negl_lut, negl_count, empty, empty, empty, empty, block_q, block_k, k_blocks)
        return bmap.with_inverse() if with_inverse else bmap


def check_block_map(bmap: BlockMap) -> None:
    """Checks the contents of a block map and raises ValueError naming the table, the row (b, h, i) and the value
    of the first problem found (include/sla/sla.h, check_block_map, lists the rules: counts in [0, T] and [0, Tn],
    the first count entries of a row in [0, Nk) and distinct (any order), no block both critical and negligible,
    inverse tables equal to what ``with_inverse()`` builds).

    CPU maps are checked by every forward and backward anyway. CUDA maps are checked on the device by the kernels,
    without a host synchronisation (so CUDA graphs still capture them); a malformed map there yields NaN in the
    outputs of the affected (b, h) instead of an error. This function copies the tables to the host, which
    synchronises with the device: call it where an explicit error is wanted (e.g. once per loaded mask).
    """
    if not isinstance(bmap, BlockMap):
        raise TypeError(f"bmap: expected an sla.BlockMap, got {type(bmap).__name__}")
    if isinstance(bmap.k_blocks, bool) or not isinstance(bmap.k_blocks, int):
        raise TypeError(f"bmap.k_blocks: expected an int (Nk), got {bmap.k_blocks!r}")
    tables = [t.detach().cpu() for t in bmap.tables()]
    torch.ops.sla.check_block_map(*tables, bmap.k_blocks)


def block_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    topk: Optional[PerHead] = None,
    block_q: int = 64,
    block_k: int = 64,
    variant: str = "global",
    negligible: float = 0.0,
    layout: str = "BHLD",
    with_inverse: bool = True,
    top_p: Optional[PerHead] = None,
    min_blocks: int = 1,
    max_blocks: Optional[int] = None,
    negligible_threshold: float = 0.0,
    max_negligible: Optional[float] = None,
    scale: Optional[float] = None,
    rule: Optional[BlockRule] = None,
) -> BlockMap:
    """Predicts the block map from q and k (docs/SPEC.md section 1, docs/BLOCK_MAP.md): smooth-K, mean pooling, scores,
    then per query block the critical key blocks by one rule (ties to the lower index):

    - ``topk``: T = clamp(floor(topk * Nk), 1, Nk) blocks; a float, or one value per head (sequence or tensor);
    - ``top_p``: the fewest blocks whose share of the pooled attention softmax(scale * S_i) reaches p, clamped to
      [min_blocks, max_blocks] (max_blocks None means Nk); a float or one value per head.

    The complement variant also skips negligible blocks: a fixed fraction ``negligible`` of the lowest-scoring ones,
    or those whose pooled share is below ``negligible_threshold`` (at most ``max_negligible`` of the key blocks;
    None means no cap). ``rule`` (an sla.BlockRule) may replace all of these. ``with_inverse`` also builds the
    inverse tables, which only the CPU backward reads (the CUDA backward builds its own): pass False for inference
    or on CUDA. No gradient flows through it."""
    _options.check_choice("layout", layout, _options.LAYOUTS)
    _options.check_choice("variant", variant, _options.VARIANTS)
    _options.check_attention_tensor("q", q)
    _options.check_attention_tensor("k", k)
    _options.check_rank4("q", q, layout)
    _options.check_rank4("k", k, layout)
    _options.check_same_device(("q", q), ("k", k))
    _options.check_block_size("block_q", block_q)
    _options.check_block_size("block_k", block_k)
    if rule is None:
        _options.check_rule_numbers(negligible, negligible_threshold, max_negligible)
        rule = BlockRule.make(
            topk=topk,
            top_p=top_p,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            negligible=negligible,
            negligible_threshold=negligible_threshold,
            max_negligible=max_negligible,
        )
    elif not isinstance(rule, BlockRule):
        raise TypeError(f"rule: expected an sla.BlockRule, got {type(rule).__name__}")
    _options.check_scale(scale)
    qh = _options.to_bhld(q.detach(), layout)
    kh = _options.to_bhld(k.detach(), layout)
    a = rule.op_args()
    tables = torch.ops.sla.block_map(
        qh,
        kh,
        block_q,
        block_k,
        float(a["topk"]),
        float(a["negligible"]),
        variant,
        with_inverse,
        a["head_topk"],
        float(a["top_p"]),
        a["head_top_p"],
        int(a["min_blocks"]),
        int(a["max_blocks"]),
        float(a["negligible_threshold"]),
        float(a["max_negligible"]),
        0.0 if scale is None else float(scale),
    )
    return BlockMap(*tables, block_q=block_q, block_k=block_k, k_blocks=ceil_div(kh.shape[2], block_k))
