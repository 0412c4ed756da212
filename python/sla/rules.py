"""Block-selection rules of the block map (docs/BLOCK_MAP.md): fixed or per-head topk, cumulative-mass (top-p)
selection and the negligible threshold, as one value that the functional API, the module and calibration files
share. The library does the selection; this file only checks and forwards the parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

PerHead = Union[float, Sequence[float], torch.Tensor]


def _per_head(name: str, value: PerHead) -> tuple[float, ...] | float:
    """A float stays a float; a sequence or 1-D tensor becomes a tuple of floats (one per head)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return float(value)
        if value.dim() != 1:
            raise ValueError(
                f"{name}: expected a float or one value per head (a 1-D tensor), got shape {tuple(value.shape)}"
            )
        return tuple(float(x) for x in value.detach().cpu().double().tolist())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError(f"{name}: expected a float or one value per head, got an empty sequence")
        for x in value:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise TypeError(f"{name}: expected numbers in the per-head sequence, got {x!r}")
        return tuple(float(x) for x in value)
    raise TypeError(
        f"{name}: expected a number in (0, 1] (or one per head: a sequence or a 1-D tensor), got {value!r} "
        f"({type(value).__name__})"
    )


@dataclass(frozen=True)
class BlockRule:
    """How many key blocks each query block attends to exactly, and which ones both branches skip.

    Exactly one of ``topk`` (fraction of key blocks; a float or one per head) and ``top_p`` (share of the pooled
    attention to cover per query block; a float or one per head) is set. ``min_blocks``/``max_blocks`` clamp the
    top_p count (max_blocks None means Nk; it is also the LUT width). ``negligible`` (fixed fraction) or
    ``negligible_threshold`` (pooled share below which a block is skipped, at most ``max_negligible`` of the key
    blocks) choose the complement variant's negligible set.
    """

    topk: Optional[Union[float, tuple[float, ...]]] = None
    top_p: Optional[Union[float, tuple[float, ...]]] = None
    min_blocks: int = 1
    max_blocks: Optional[int] = None
    negligible: float = 0.0
    negligible_threshold: float = 0.0
    max_negligible: Optional[float] = None

    @classmethod
    def make(
        cls,
        topk: Optional[PerHead] = None,
        top_p: Optional[PerHead] = None,
        min_blocks: int = 1,
        max_blocks: Optional[int] = None,
        negligible: float = 0.0,
        negligible_threshold: float = 0.0,
        max_negligible: Optional[float] = None,
    ) -> "BlockRule":
        if topk is None and top_p is None:
            # The fixed rule's message (and type), as for any missing number; top_p is the alternative.
            raise TypeError(
                "topk: expected a number in (0, 1], got None (NoneType); or give top_p= for the cumulative-mass rule"
            )
        if topk is not None and top_p is not None:
            raise ValueError(
                "topk/top_p: expected exactly one of them (topk: fraction of key blocks; top_p: share "
                f"of the pooled attention), got topk={topk!r} and top_p={top_p!r}"
            )
        for name, v in (("min_blocks", min_blocks), ("max_blocks", max_blocks)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if topk is not None and (min_blocks != 1 or max_blocks is not None):
            raise ValueError("min_blocks/max_blocks: only the top_p rule clamps counts; got them with topk")
        top_p = None if top_p is None else _per_head("top_p", top_p)
        if isinstance(top_p, float) and not (0.0 < top_p <= 1.0):
            # The op reads top_p == 0 as "the topk rule": a zero (or NaN) here must not select it silently.
            raise ValueError(f"top_p: expected a finite value in (0, 1], got {top_p}")
        return cls(
            topk=None if topk is None else _per_head("topk", topk),
            top_p=top_p,
            min_blocks=int(min_blocks),
            max_blocks=max_blocks,
            negligible=float(negligible),
            negligible_threshold=float(negligible_threshold),
            max_negligible=None if max_negligible is None else float(max_negligible),
        )

    @property
    def is_fixed(self) -> bool:
        """One topk for every head and no negligible threshold: the public module's rule."""
        return isinstance(self.topk, float) and self.negligible_threshold == 0.0

    def op_args(self) -> dict:
        """Keyword arguments of torch.ops.sla.block_map (the library checks every value and names it)."""
        head_topk = list(self.topk) if isinstance(self.topk, tuple) else []
        head_top_p = list(self.top_p) if isinstance(self.top_p, tuple) else []
        thr = self.negligible_threshold
        return dict(
            topk=self.topk if isinstance(self.topk, float) else 0.05,
            negligible=self.negligible,
            head_topk=head_topk,
            top_p=self.top_p if isinstance(self.top_p, float) else 0.0,
            head_top_p=head_top_p,
            min_blocks=self.min_blocks if self.top_p is not None else 1,
            max_blocks=(self.max_blocks or 0) if self.top_p is not None else 0,
            negligible_threshold=thr,
            max_negligible=(1.0 if self.max_negligible is None else self.max_negligible) if thr > 0 else 0.0,
        )

    def to_dict(self) -> dict:
        d = {}
        for key in ("topk", "top_p"):
            v = getattr(self, key)
            if v is not None:
                d[key] = list(v) if isinstance(v, tuple) else v
        if self.top_p is not None:
            d["min_blocks"] = self.min_blocks
            d["max_blocks"] = self.max_blocks
        if self.negligible:
            d["negligible"] = self.negligible
        if self.negligible_threshold:
            d["negligible_threshold"] = self.negligible_threshold
            d["max_negligible"] = self.max_negligible
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BlockRule":
        known = {"topk", "top_p", "min_blocks", "max_blocks", "negligible", "negligible_threshold", "max_negligible"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"rule: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls.make(**d)


def capacities(rule: BlockRule, heads: int, k_blocks: int, variant: str) -> tuple[int, int]:
    """(T, Tn): the widths of the LUT and of the negligible table, as the library computes them
    (sla::block_map_shape); used by the fake kernels."""
    args = rule.op_args()
    return table_widths(k_blocks, variant, **args)


def table_widths(
    k_blocks: int,
    variant: str,
    *,
    topk: float,
    negligible: float,
    head_topk=(),
    top_p: float = 0.0,
    head_top_p=(),
    min_blocks: int = 1,
    max_blocks: int = 0,
    negligible_threshold: float = 0.0,
    max_negligible: float = 0.0,
) -> tuple[int, int]:
    nk = k_blocks
    if top_p != 0.0 or len(head_top_p) > 0:
        t = nk if max_blocks == 0 else min(max_blocks, nk)
    else:
        tk = max(head_topk) if len(head_topk) > 0 else topk
        t = min(max(math.floor(tk * nk), 1), nk)
    tn = 0
    if variant == "complement":
        frac = max_negligible if negligible_threshold > 0 else negligible
        if frac > 0:
            tn = max(min(math.floor(frac * nk), nk - t), 0)
    return t, tn


__all__ = ["BlockRule"]
