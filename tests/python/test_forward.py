"""Forward numerics of sla.sparse_linear_attention on the CPU in float64 against the dense reference
(docs/SPEC.md sections 2-4 and invariants 7.1-7.4, 7.6-7.8)."""

from __future__ import annotations

import math

import pytest
import torch

import sla

import reference
from conftest import make_projection, make_qkv, masks_of, to_bhld

TOL = dict(rtol=1e-9, atol=1e-10)  # float64 end to end: only summation order differs


def run_both(
    q,
    k,
    v,
    *,
    layout="BHLD",
    bq=64,
    bk=64,
    topk=0.3,
    variant="global",
    phi="softmax",
    negligible=0.0,
    weight=None,
    bias=None,
    scale=None,
):
    o, bmap = sla.sparse_linear_attention(
        q,
        k,
        v,
        topk=topk,
        block_q=bq,
        block_k=bk,
        feature_map=phi,
        variant=variant,
        negligible=negligible,
        layout=layout,
        scale=scale,
        proj_weight=weight,
        proj_bias=bias,
        return_block_map=True,
    )
    critical, negligible_mask = masks_of(bmap)
    ref, _, _ = reference.sla_attention(
        to_bhld(q, layout),
        to_bhld(k, layout),
        to_bhld(v, layout),
        critical,
        negligible_mask,
        bq=bq,
        bk=bk,
        variant=variant,
        phi=phi,
        scale=scale,
        weight=weight,
        bias=bias,
    )
    return to_bhld(o, layout), ref, bmap


@pytest.mark.parametrize("variant", ["global", "complement"])
@pytest.mark.parametrize("phi", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("layout", ["BHLD", "BLHD"])
def test_matches_reference(variant, phi, layout):
    q, k, v = make_qkv(2, 3, 200, 333, 32, layout=layout)
    w, b = make_projection(32)
    o, ref, _ = run_both(q, k, v, layout=layout, bq=64, bk=128, variant=variant, phi=phi, weight=w, bias=b)
    torch.testing.assert_close(o, ref, **TOL)


@pytest.mark.parametrize(
    "lq,lk,bq,bk", [(1000, 1000, 64, 64), (37, 300, 64, 64), (300, 37, 128, 64), (129, 255, 128, 128), (64, 64, 64, 64)]
)
@pytest.mark.parametrize("variant", ["global", "complement"])
def test_ragged_lengths(lq, lk, bq, bk, variant):
    q, k, v = make_qkv(1, 2, lq, lk, 16, dv=24)
    w, b = make_projection(24)
    o, ref, _ = run_both(q, k, v, bq=bq, bk=bk, topk=0.25, variant=variant, weight=w, bias=b)
    torch.testing.assert_close(o, ref, **TOL)


def test_nothing_past_the_end_is_read():
    # Invariant 7.6: the first 1000 tokens of a longer buffer give the same result as exactly those tokens.
    q, k, v = make_qkv(1, 2, 1100, 1100, 16)
    short = [t[:, :, :1000] for t in (q, k, v)]
    exact = [t.clone() for t in short]
    w, b = make_projection(16)
    kwargs = dict(topk=0.2, proj_weight=w, proj_bias=b)
    o_view = sla.sparse_linear_attention(*short, **kwargs)
    o_exact = sla.sparse_linear_attention(*exact, **kwargs)
    assert torch.equal(o_view, o_exact)


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_negligible_blocks_are_skipped(variant):
    q, k, v = make_qkv(2, 2, 300, 700, 16)
    w, b = make_projection(16)
    negligible = 0.3 if variant == "complement" else 0.0
    o, ref, bmap = run_both(q, k, v, topk=0.2, variant=variant, negligible=negligible, weight=w, bias=b)
    assert (bmap.negl_lut.shape[-1] > 0) == (variant == "complement")
    torch.testing.assert_close(o, ref, **TOL)


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_topk_one_is_dense_attention(variant):
    # Invariant 7.1 (W = b = 0): every key block is critical.
    q, k, v = make_qkv(1, 2, 150, 190, 16)
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant=variant)
    dense = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) @ v
    torch.testing.assert_close(o, dense, **TOL)


def test_complement_linear_branch_is_zero_at_topk_one():
    q, k, v = make_qkv(1, 2, 150, 190, 16)
    w, b = make_projection(16)
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant="complement", proj_weight=w, proj_bias=b)
    o_no_w = sla.sparse_linear_attention(q, k, v, topk=1.0, variant="complement", proj_bias=b)
    assert torch.equal(o, o_no_w)


def test_zero_projection_gives_the_sparse_branch():
    # Invariant 7.2.
    q, k, v = make_qkv(1, 2, 250, 250, 16)
    zero_w, zero_b = torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    o, bmap = sla.sparse_linear_attention(
        q, k, v, topk=0.3, proj_weight=zero_w, proj_bias=zero_b, return_block_map=True
    )
    critical, _ = masks_of(bmap)
    o_s = reference.sparse_branch(q, k, v, reference.expand_blocks(critical, 250, 250, 64, 64), 1 / 4)
    torch.testing.assert_close(o, o_s, **TOL)
    assert torch.equal(o, sla.sparse_linear_attention(q, k, v, topk=0.3))


def test_custom_scale():
    q, k, v = make_qkv(1, 2, 130, 130, 16)
    w, b = make_projection(16)
    o, ref, _ = run_both(q, k, v, scale=0.37, weight=w, bias=b)
    torch.testing.assert_close(o, ref, **TOL)


def test_float32_inputs():
    q, k, v = make_qkv(1, 2, 200, 260, 32, dtype=torch.float32)
    w, b = make_projection(32, dtype=torch.float32)
    o, bmap = sla.sparse_linear_attention(q, k, v, topk=0.3, proj_weight=w, proj_bias=b, return_block_map=True)
    assert o.dtype == torch.float32
    critical, _ = masks_of(bmap)
    ref, _, _ = reference.sla_attention(
        q.double(), k.double(), v.double(), critical, None, bq=64, bk=64, weight=w.double(), bias=b.double()
    )
    torch.testing.assert_close(o.double(), ref, rtol=1e-5, atol=1e-5)


def test_caller_block_map_is_used():
    q, k, v = make_qkv(1, 2, 256, 384, 16)
    scores = torch.rand(1, 2, 4, 6)
    lut = torch.sort(torch.topk(scores, 2, dim=-1).indices, dim=-1).values.to(torch.int32)
    bmap = sla.BlockMap.from_lut(lut, k_blocks=6, block_q=64, block_k=64)
    w, b = make_projection(16)
    o = sla.sparse_linear_attention(q, k, v, topk=0.9, block_map=bmap, proj_weight=w, proj_bias=b)
    critical, _ = masks_of(bmap)
    ref, _, _ = reference.sla_attention(q, k, v, critical, None, bq=64, bk=64, weight=w, bias=b)
    torch.testing.assert_close(o, ref, **TOL)


def test_permuting_the_lut_changes_only_rounding():
    # Invariant 7.7.
    q, k, v = make_qkv(1, 2, 256, 512, 16)
    bmap = sla.block_map(q, k, topk=0.5)
    perm = bmap._replace(lut=bmap.lut.flip(-1).contiguous())
    o1 = sla.sparse_linear_attention(q, k, v, topk=0.5, block_map=bmap)
    o2 = sla.sparse_linear_attention(q, k, v, topk=0.5, block_map=perm)
    torch.testing.assert_close(o1, o2, **TOL)


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_scaling_v_scales_both_branches(variant):
    q, k, v = make_qkv(1, 2, 200, 200, 16)
    w, _ = make_projection(16)
    o1 = sla.sparse_linear_attention(q, k, v, topk=0.3, variant=variant, proj_weight=w)
    o2 = sla.sparse_linear_attention(q, k, 2.5 * v, topk=0.3, variant=variant, proj_weight=w)
    torch.testing.assert_close(o2, 2.5 * o1, **TOL)


def test_runs_are_bitwise_identical():
    q, k, v = make_qkv(2, 2, 300, 300, 32, dtype=torch.float32)
    w, b = make_projection(32, dtype=torch.float32)
    first = sla.sparse_linear_attention(q, k, v, topk=0.2, proj_weight=w, proj_bias=b)
    for _ in range(3):
        assert torch.equal(first, sla.sparse_linear_attention(q, k, v, topk=0.2, proj_weight=w, proj_bias=b))


def test_strided_inputs_are_read_in_place():
    # Sliced heads and a padded head dim: any strides with a contiguous last dim.
    big_q, big_k, big_v = make_qkv(2, 5, 200, 200, 40)
    q, k, v = big_q[:, 1:4, :, :32], big_k[:, ::2, :, 8:], big_v[:, 2:, :, :32]
    assert not q.is_contiguous()
    o, ref, _ = run_both(q, k, v, topk=0.3)
    torch.testing.assert_close(o, ref, **TOL)


def test_transposed_last_dim_is_accepted():
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)  # same values, last dim not contiguous
    assert qt.stride(-1) != 1
    assert torch.equal(sla.sparse_linear_attention(qt, k, v, topk=0.5), sla.sparse_linear_attention(q, k, v, topk=0.5))


def test_blhd_output_is_contiguous_in_blhd():
    q, k, v = make_qkv(1, 4, 100, 100, 16, layout="BLHD")
    o = sla.sparse_linear_attention(q, k, v, topk=0.5, layout="BLHD")
    assert o.shape == (1, 100, 4, 16) and o.is_contiguous()
