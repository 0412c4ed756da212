"""sla.SparseLinearAttention: compatibility with the public thu-ml/SLA module (names, defaults, dtypes, outputs)."""

from __future__ import annotations

import pytest
import torch

import sla

import reference
from conftest import make_qkv, masks_of


def test_parameters_have_the_public_names_and_start_at_zero():
    layer = sla.SparseLinearAttention(64, 0.05)
    state = layer.state_dict()
    assert set(state) == {"proj_l.weight", "proj_l.bias"}
    assert state["proj_l.weight"].shape == (64, 64) and state["proj_l.bias"].shape == (64,)
    assert state["proj_l.weight"].dtype == torch.float32
    assert torch.count_nonzero(state["proj_l.weight"]) == 0 and torch.count_nonzero(state["proj_l.bias"]) == 0
    assert (layer.topk, layer.BLKQ, layer.BLKK, layer.dtype) == (0.05, 64, 64, torch.bfloat16)
    assert sla.SparseLinearAttention(64, 0.05, use_bf16=False).dtype == torch.float16


def test_state_dict_round_trip():
    # A checkpoint saved by a model using the public module is a state dict with these keys.
    public_state = {"proj_l.weight": torch.randn(32, 32), "proj_l.bias": torch.randn(32)}
    layer = sla.SparseLinearAttention(32, 0.3)
    layer.load_state_dict(public_state)
    again = sla.SparseLinearAttention(32, 0.3)
    again.load_state_dict(layer.state_dict())
    for key, value in public_state.items():
        assert torch.equal(again.state_dict()[key], value)
    q, k, v = make_qkv(1, 2, 130, 130, 32, dtype=torch.float32)
    assert torch.equal(layer(q, k, v), again(q, k, v))


def test_forward_uses_the_projection():
    layer = sla.SparseLinearAttention(16, 0.3, feature_map="elu", BLKQ=128, BLKK=64, variant="complement")
    with torch.no_grad():
        layer.proj_l.weight.normal_()
        layer.proj_l.bias.normal_()
    q, k, v = make_qkv(2, 2, 300, 200, 16)
    o = layer(q, k, v)
    bmap = sla.block_map(q, k, topk=0.3, block_q=128, block_k=64)
    critical, _ = masks_of(bmap)
    ref, _, _ = reference.sla_attention(
        q,
        k,
        v,
        critical,
        None,
        bq=128,
        bk=64,
        variant="complement",
        phi="elu",
        weight=layer.proj_l.weight.double(),
        bias=layer.proj_l.bias.double(),
    )
    torch.testing.assert_close(o, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_keeps_the_input_dtype(dtype):
    layer = sla.SparseLinearAttention(16, 0.5)
    q, k, v = make_qkv(1, 2, 100, 100, 16, dtype=dtype)
    assert layer(q, k, v).dtype == dtype


def test_zero_initialised_layer_is_sparse_attention():
    layer = sla.SparseLinearAttention(16, 0.25)
    q, k, v = make_qkv(1, 2, 256, 256, 16)
    o = layer(q, k, v)
    bmap = sla.block_map(q, k, topk=0.25)
    critical, _ = masks_of(bmap)
    o_s = reference.sparse_branch(q, k, v, reference.expand_blocks(critical, 256, 256, 64, 64), 0.25)
    torch.testing.assert_close(o, o_s, rtol=1e-9, atol=1e-10)


def test_return_sparsity_is_the_attended_fraction():
    layer = sla.SparseLinearAttention(16, 0.2)
    q, k, v = make_qkv(1, 2, 197, 197, 16)
    o, density = layer(q, k, v, return_sparsity=True)
    # 197 tokens, 64-blocks: Nk = 4, floor(0.2 * 4) = 0 is clamped to 1 (the public code would divide by zero).
    assert density == 1 / 4
    assert o.shape == q.shape and torch.isfinite(o).all()


def test_block_map_reuse():
    layer = sla.SparseLinearAttention(16, 0.3)
    q, k, v = make_qkv(1, 2, 256, 256, 16)
    bmap = sla.block_map(q, k, topk=0.3)
    q2 = q + 0.5 * torch.randn_like(q)
    # With the map of (q, k), a different q attends to the same blocks.
    o = layer(q2, k, v, block_map=bmap)
    critical, _ = masks_of(bmap)
    o_s = reference.sparse_branch(q2, k, v, reference.expand_blocks(critical, 256, 256, 64, 64), 0.25)
    torch.testing.assert_close(o, o_s, rtol=1e-9, atol=1e-10)


def test_blhd_layout():
    layer = sla.SparseLinearAttention(16, 0.3, layout="BLHD")
    q, k, v = make_qkv(1, 3, 150, 150, 16, layout="BLHD")
    o = layer(q, k, v)
    ref = sla.SparseLinearAttention(16, 0.3)(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert o.shape == q.shape
    torch.testing.assert_close(o, ref, rtol=0, atol=0)


def test_hedgehog_is_not_implemented():
    with pytest.raises(NotImplementedError, match="feature_map"):
        sla.SparseLinearAttention(64, 0.1, feature_map="hedgehog")


def test_repr_names_the_options():
    text = repr(sla.SparseLinearAttention(64, 0.1, variant="complement"))
    assert "topk=0.1" in text and "complement" in text and "proj_l" in text
