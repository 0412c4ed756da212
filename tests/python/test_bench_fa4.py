"""bench/bench_fa4.py on the CPU: the conversion of a block map into FlashAttention-4's block-sparse tensors (the
timing itself needs a GPU with FA4 and runs on the device)."""

from __future__ import annotations

import importlib.util
import os
import types
from typing import NamedTuple, Optional

import torch

import sla

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


def load_bench_fa4():
    spec = importlib.util.spec_from_file_location("bench_fa4", os.path.join(BENCH, "bench_fa4.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeBlockSparseTensors(NamedTuple):  # the fields of flash_attn.cute.block_sparsity.BlockSparseTensorsTorch used
    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: Optional[torch.Tensor] = None
    full_block_idx: Optional[torch.Tensor] = None
    block_size: Optional[tuple] = None


def test_block_map_becomes_full_blocks_padded_to_nk():
    fa4 = load_bench_fa4()
    torch.manual_seed(0)
    q, k = (torch.randn(2, 700, 3, 32) for _ in range(2))  # BLHD, a ragged last block
    bmap = sla.block_map(q, k, topk=0.3, block_q=128, block_k=64, layout="BLHD", with_inverse=False)
    bst = fa4.fa4_block_sparse_tensors(bmap, types.SimpleNamespace(BlockSparseTensorsTorch=FakeBlockSparseTensors))
    b, h, nq, t = bmap.lut.shape
    nk = bmap.k_blocks
    assert bst.block_size == (128, 64)
    assert bst.full_block_idx.shape == (b, h, nq, nk) and bst.full_block_idx.dtype == torch.int32
    assert torch.equal(bst.full_block_cnt, bmap.count)
    assert torch.equal(bst.full_block_idx[..., :t], bmap.lut.clamp(min=0))
    assert not bst.full_block_idx[..., t:].any()
    assert not bst.mask_block_cnt.any() and bst.mask_block_cnt.shape == (b, h, nq)
    # Every listed block is a distinct valid key block of its row.
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                row = bst.full_block_idx[bi, hi, i, : int(bst.full_block_cnt[bi, hi, i])].tolist()
                assert len(set(row)) == len(row) and all(0 <= j < nk for j in row)
