"""Sizes of a problem's block map: the formulas of docs/SPEC.md section 1, shared by the fake (meta) kernels and the
Python API. The library computes the same numbers (sla::block_map_shape); tests check that they agree."""

from __future__ import annotations

import math
from typing import NamedTuple


class BlockMapSizes(NamedTuple):
    q_blocks: int  # Nq = ceil(Lq / bq)
    k_blocks: int  # Nk = ceil(Lk / bk)
    critical: int  # T = clamp(floor(topk * Nk), 1, Nk)
    negligible: int  # Tn = min(floor(k_l * Nk), Nk - T); 0 for the global variant


def ceil_div(a, b):
    return (a + b - 1) // b


def block_map_sizes(lq, lk, block_q: int, block_k: int, topk: float, negligible: float, variant: str) -> BlockMapSizes:
    # Eager calls reach the library's own checks first; this one serves tracing, where only the fake kernels run.
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block <= 0:
            raise ValueError(f"{name}: expected a block size such as 64 or 128, got {block}")
    nq = ceil_div(lq, block_q)
    nk = ceil_div(lk, block_k)
    # Python floats are doubles, as docs/SPEC.md asks for; the clamp avoids the public code's T = 0.
    t = min(max(math.floor(topk * nk), 1), nk)
    tn = 0
    if variant == "complement" and negligible > 0:
        tn = max(min(math.floor(negligible * nk), nk - t), 0)
    return BlockMapSizes(nq, nk, t, tn)


def topk_for_count(count: int, k_blocks: int) -> float:
    """The smallest topk (a double) for which floor(topk * Nk) == count: the fixed-rule option under which
    sla.block_map gives every row `count` critical blocks (calibration reports its topk choices this way). The
    forward and backward ops need no such option: they read T from the LUT."""
    topk = count / k_blocks
    while math.floor(topk * k_blocks) < count:
        topk = math.nextafter(topk, math.inf)
    return topk
