"""The adaptive block-map rules through the Python API (docs/BLOCK_MAP.md) against a brute force written here from
the definitions, plus forward on an adaptive map, the module, the fake kernel and the argument errors."""

from __future__ import annotations

import math

import pytest
import torch

import sla

import reference
from conftest import make_qkv, masks_of


def brute(q, k, bq, bk, *, topk=None, top_p=None, min_blocks=1, max_blocks=None, threshold=0.0, tn_width=0, scale=None):
    """(critical, negligible) masks (B, H, Nq, Nk) from the definitions: fp64 pooled scores, stable order, prefix
    shares recomputed from scratch for every n."""
    scores = reference.pooled_scores(q, k, bq, bk)
    b, h, nq, nk = scores.shape
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    crit = torch.zeros_like(scores, dtype=torch.bool)
    negl = torch.zeros_like(crit)
    width = nk if max_blocks is None else min(max_blocks, nk)
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                row = scores[bi, hi, i]
                order = torch.sort(row, descending=True, stable=True).indices
                share = torch.softmax(s * row, 0)
                if top_p is not None:
                    p = top_p[hi] if isinstance(top_p, (list, tuple)) else top_p
                    t = next((n for n in range(1, nk + 1) if float(share[order[:n]].sum()) >= p), nk)
                    t = min(max(t, min(min_blocks, width)), width)
                else:
                    tk = topk[hi] if isinstance(topk, (list, tuple)) else topk
                    t = min(max(math.floor(tk * nk), 1), nk)
                crit[bi, hi, i, order[:t]] = True
                tn = min(tn_width, nk - t)
                if threshold > 0:
                    tn = min(tn, int((share < threshold).sum()))
                if tn > 0:
                    negl[bi, hi, i, order[nk - tn :]] = True
    return crit, negl


def structured(b, h, lq, lk, d, spread=3.0):
    q, k, _ = make_qkv(b, h, lq, lk, d)
    return q * spread, k * spread


def test_per_head_topk_matches_brute_force():
    q, k = structured(2, 3, 200, 333, 16)
    topk = [0.05, 0.3, 0.8]
    bmap = sla.block_map(q, k, topk=topk, block_q=32, block_k=16)
    crit, _ = masks_of(bmap)
    want, _ = brute(q, k, 32, 16, topk=topk)
    assert torch.equal(crit, want)
    nk = bmap.k_blocks
    assert bmap.real_topk == math.floor(0.8 * nk)
    assert torch.all(bmap.count[:, 0] == max(math.floor(0.05 * nk), 1))
    # Entries past a row's count are -1.
    t = torch.arange(bmap.real_topk)
    assert torch.all(bmap.lut[t.expand_as(bmap.lut) >= bmap.count[..., None]] == -1)
    # A tensor of per-head values is accepted too.
    again = sla.block_map(q, k, topk=torch.tensor(topk), block_q=32, block_k=16)
    assert torch.equal(again.lut, bmap.lut)


@pytest.mark.parametrize("p", [0.3, 0.7, 0.95, 1.0])
def test_top_p_matches_brute_force(p):
    q, k = structured(1, 2, 256, 400, 16)
    bmap = sla.block_map(q, k, top_p=p, block_q=32, block_k=16)
    crit, _ = masks_of(bmap)
    want, _ = brute(q, k, 32, 16, top_p=p)
    assert torch.equal(crit, want)
    assert bmap.real_topk == bmap.k_blocks  # max_blocks None: the LUT is Nk wide


def test_per_head_top_p_clamp_and_density():
    q, k = structured(1, 3, 256, 301, 16)
    p = [0.5, 0.9, 0.999]
    bmap = sla.block_map(q, k, top_p=p, min_blocks=3, max_blocks=9, block_q=16, block_k=16)
    crit, _ = masks_of(bmap)
    want, _ = brute(q, k, 16, 16, top_p=p, min_blocks=3, max_blocks=9)
    assert torch.equal(crit, want)
    assert bmap.real_topk == 9
    assert 3 <= int(bmap.count.min()) and int(bmap.count.max()) <= 9
    dens = bmap.head_density()
    assert dens[0] < dens[2]
    assert bmap.mean_density == pytest.approx(float(bmap.count.double().mean()) / bmap.k_blocks)


def test_negligible_threshold_matches_brute_force():
    q, k = structured(1, 2, 256, 330, 16)
    bmap = sla.block_map(
        q,
        k,
        top_p=0.8,
        max_blocks=10,
        variant="complement",
        negligible_threshold=0.01,
        max_negligible=0.5,
        block_q=32,
        block_k=16,
    )
    crit, negl = masks_of(bmap)
    nk = bmap.k_blocks
    tn_width = min(math.floor(0.5 * nk), nk - 10)
    want_c, want_n = brute(q, k, 32, 16, top_p=0.8, max_blocks=10, threshold=0.01, tn_width=tn_width)
    assert torch.equal(crit, want_c)
    assert torch.equal(negl, want_n)
    assert bmap.negl_lut.shape[-1] == tn_width
    assert not torch.any(crit & negl)


def test_forward_on_an_adaptive_map_equals_the_reference():
    q, k, v = make_qkv(1, 2, 130, 200, 8)
    q, k = 2 * q, 2 * k
    w = 0.3 * torch.randn(8, 8, dtype=torch.float64)
    bias = 0.3 * torch.randn(8, dtype=torch.float64)
    o, bmap = sla.sparse_linear_attention(
        q,
        k,
        v,
        top_p=[0.5, 0.9],
        max_blocks=5,
        variant="complement",
        negligible_threshold=0.05,
        max_negligible=0.5,
        block_q=32,
        block_k=32,
        proj_weight=w,
        proj_bias=bias,
        return_block_map=True,
    )
    crit, negl = masks_of(bmap)
    ref, _, _ = reference.sla_attention(q, k, v, crit, negl, bq=32, bk=32, variant="complement", weight=w, bias=bias)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)


def test_gradients_flow_through_an_adaptive_map():
    q, k, v = make_qkv(1, 2, 128, 128, 8, requires_grad=True)
    o = sla.sparse_linear_attention(q, k, v, topk=[0.25, 0.5], block_q=32, block_k=32)
    o.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_module_with_rules_and_set_rule():
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    layer = sla.SparseLinearAttention(16, top_p=0.9, max_blocks=2, BLKQ=64, BLKK=64)
    o, density = layer(q, k, v, return_sparsity=True)
    assert o.shape == q.shape and 0 < density <= 1
    layer.set_rule(sla.BlockRule.make(topk=[0.5, 1.0]))
    o2 = layer(q, k, v)
    ref = sla.sparse_linear_attention(
        q, k, v, topk=[0.5, 1.0], proj_weight=layer.proj_l.weight, proj_bias=layer.proj_l.bias
    )
    assert torch.equal(o2, ref)
    assert "rule=" in repr(layer)


def test_fake_kernel_gives_the_table_widths():
    q, k, _ = make_qkv(1, 3, 100, 640, 16)
    args = (q, k, 64, 64, 0.05, 0.0, "complement", True)
    kw = dict(top_p=0.9, max_blocks=6, negligible_threshold=0.01, max_negligible=0.8)
    real = torch.ops.sla.block_map(*args, **kw)
    torch.library.opcheck(torch.ops.sla.block_map.default, args, kw)
    assert real[0].shape[-1] == 6 and real[2].shape[-1] == 4
    torch.library.opcheck(
        torch.ops.sla.block_map.default, (q, k, 64, 64, 0.05, 0.0, "global", False), dict(head_topk=[0.1, 0.45, 0.2])
    )


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(topk=0.1, top_p=0.9), ValueError, "topk/top_p: expected exactly one"),
        (dict(), TypeError, r"topk: expected a number in \(0, 1\], got None"),
        (dict(topk=[0.1, 0.2, 0.3]), ValueError, r"cfg.head_topk: expected H = 2 values"),
        (dict(topk=[0.1, 1.5]), ValueError, r"topk\[1\]: expected a finite value in \(0, 1\], got 1.5"),
        (dict(top_p=0.0), ValueError, "top_p: expected a finite value in"),
        (dict(top_p=[0.9, 0.0]), ValueError, r"top_p\[1\]: expected a finite value in \(0, 1\], got 0.0"),
        (dict(top_p=0.9, min_blocks=0), ValueError, "min_blocks: expected an int >= 1, got 0"),
        (
            dict(top_p=0.9, min_blocks=4, max_blocks=2),
            ValueError,
            r"max_blocks: expected None \(meaning Nk\) or an int >= min_blocks = 4, got 2",
        ),
        (dict(topk=0.1, max_blocks=2), ValueError, "min_blocks/max_blocks"),
        (dict(topk=0.1, negligible_threshold=0.01), ValueError, "cfg.negligible_threshold"),
        (
            dict(topk=0.1, variant="complement", negligible_threshold=1.5),
            ValueError,
            r"negligible_threshold: expected a finite value in \[0, 1\), got 1.5",
        ),
        (dict(topk="x"), TypeError, "topk"),
    ],
)
def test_bad_rule_arguments(kwargs, exc, pattern):
    q, k, _ = make_qkv(1, 2, 128, 128, 16)
    with pytest.raises(exc, match=pattern):
        sla.block_map(q, k, **kwargs)


def test_rule_dict_round_trip():
    for rule in (
        sla.BlockRule.make(topk=0.1),
        sla.BlockRule.make(topk=[0.1, 0.2]),
        sla.BlockRule.make(
            top_p=[0.9, 0.95], min_blocks=2, max_blocks=8, negligible_threshold=1e-3, max_negligible=0.5
        ),
    ):
        assert sla.BlockRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="unknown keys"):
        sla.BlockRule.from_dict({"topk": 0.1, "top_k": 0.2})
