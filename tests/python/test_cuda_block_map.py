"""The adaptive block-map rules on CUDA against the CPU backend on the same bf16 inputs (docs/BLOCK_MAP.md section
2: rows identical except near-boundary rows, at most 1%), and a tiled module on CUDA. Skips without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

import sla

import reference
from conftest import masks_of, requires_cuda

pytestmark = requires_cuda


def local_qk(h, length, d, seed):
    """Position features (local attention of per-head width) plus noise, bf16: shares far from uniform."""
    g = torch.Generator().manual_seed(seed)
    m = d // 2
    pos = torch.arange(length, dtype=torch.float64)
    out = []
    for _ in range(2):
        heads = []
        for hh in range(h):
            w = torch.randn(m, generator=g, dtype=torch.float64) / (40.0 * (1 + hh % 4))
            amp = math.sqrt(8.0 * math.sqrt(d) / m)
            ph = pos[:, None] * w[None, :]
            x = torch.stack([amp * ph.cos(), amp * ph.sin()], -1).reshape(length, d)
            heads.append(x + 0.3 * amp * torch.randn(length, d, generator=g, dtype=torch.float64))
        out.append(torch.stack(heads)[None].to(torch.bfloat16))
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(topk=[0.03, 0.1, 0.2, 0.5]),
        dict(top_p=0.9),
        dict(top_p=[0.5, 0.8, 0.95, 0.99], min_blocks=2, max_blocks=24),
        dict(top_p=0.8, max_blocks=32, variant="complement", negligible_threshold=1e-3, max_negligible=0.6),
    ],
)
@pytest.mark.parametrize("bq", [64, 128])
def test_rules_match_the_cpu_backend(kwargs, bq):
    q, k = local_qk(4, 4096, 128, seed=bq)
    gpu = sla.block_map(q.cuda(), k.cuda(), block_q=bq, block_k=64, **kwargs)
    again = sla.block_map(q.cuda(), k.cuda(), block_q=bq, block_k=64, **kwargs)
    cpu = sla.block_map(q, k, block_q=bq, block_k=64, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(gpu.tables(), again.tables())), "two GPU runs differ"
    assert gpu.lut.shape == cpu.lut.shape and gpu.negl_lut.shape == cpu.negl_lut.shape
    gc, gn = masks_of(gpu)
    cc, cn = masks_of(cpu)
    same = (gc == cc).all(-1)
    if gn is not None:
        same &= (gn == cn).all(-1)
    scores = reference.pooled_scores(q, k, bq, 64)
    share = torch.softmax(scores / math.sqrt(128), -1)
    bad = 0
    for idx in (~same).nonzero().tolist():
        row_share, sel = share[tuple(idx)], gc[tuple(idx)]
        mass, weakest = float(row_share[sel].sum()), float(row_share[sel].min())
        ok = True
        if "top_p" in kwargs:
            p = kwargs["top_p"] if isinstance(kwargs["top_p"], float) else kwargs["top_p"][idx[1]]
            n = int(sel.sum())
            clamped = n in (min(kwargs.get("min_blocks", 1), gpu.real_topk), gpu.real_topk)
            ok = clamped or (mass >= p - 1e-4 and mass - weakest < p + 1e-4)
        else:
            s = scores[tuple(idx)]
            ok = float(s[sel].min()) >= float(s[~sel].max()) - 1e-5 * float(s.abs().max())
        if gn is not None:
            diff = gn[tuple(idx)] != cn[tuple(idx)]
            thr = kwargs["negligible_threshold"]
            ok = ok and bool(((row_share[diff] - thr).abs() <= 1e-3 * thr).all())
        bad += 0 if ok else 1
    assert bad == 0
    assert int((~same).sum()) <= same.numel() // 100
    # -1 past every row's count on the GPU, as on the CPU.
    t = torch.arange(gpu.real_topk, device="cuda")
    assert torch.all(gpu.lut[t.expand_as(gpu.lut) >= gpu.count[..., None]] == -1)


def test_tiled_module_on_cuda_equals_tiling_by_hand():
    grid = (4, 8, 8)
    q, k, v = (torch.randn(1, 2, 256, 64, dtype=torch.float32) for _ in range(3))
    layer = sla.SparseLinearAttention(64, top_p=0.9, max_blocks=3, video_shape=grid).cuda()
    o = layer(q.cuda(), k.cuda(), v.cuda())
    qt, kt, vt = (sla.tiling.to_tiles(t.cuda().bfloat16(), grid) for t in (q, k, v))
    ref = sla.sparse_linear_attention(qt, kt, vt, top_p=0.9, max_blocks=3)
    torch.testing.assert_close(o, sla.tiling.from_tiles(ref, grid).float(), rtol=0, atol=0)
