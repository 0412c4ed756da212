"""Bad input raises an exception whose message names the argument (and, from the library, the expected value)."""

from __future__ import annotations

import pytest
import torch

import sla

from conftest import make_qkv


@pytest.fixture
def qkv():
    return make_qkv(1, 2, 128, 128, 16)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(layout="LBHD"), ValueError, "layout"),
        (dict(variant="paper"), ValueError, "variant"),
        (dict(feature_map="gelu"), ValueError, "feature_map"),
        (dict(feature_map="hedgehog"), NotImplementedError, "feature_map"),
        (dict(scale=0.0), ValueError, "scale"),
        (dict(scale=-1.0), ValueError, "scale"),
        (dict(topk=0.0), ValueError, "topk"),
        (dict(topk=1.5), ValueError, "topk"),
        (dict(topk=float("nan")), ValueError, "topk"),
        (dict(block_q=48), (ValueError, NotImplementedError), "block_q"),
        (dict(block_k=100), (ValueError, NotImplementedError), "block_k"),
        (dict(negligible=0.2), ValueError, "negligible"),
        (dict(variant="complement", topk=0.8, negligible=0.5), ValueError, "negligible"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(block_map="not a map"), TypeError, "block_map"),
    ],
)
def test_bad_options(qkv, kwargs, exc, pattern):
    args = dict(topk=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        sla.sparse_linear_attention(*qkv, **args)


def test_rank(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="q: expected 4 dimensions"):
        sla.sparse_linear_attention(q[0], k, v, topk=0.5)


def test_head_dim_mismatch(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"\bk\b"):
        sla.sparse_linear_attention(q, k[..., :8], v, topk=0.5)


def test_length_mismatch_of_k_and_v(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"\bv\b"):
        sla.sparse_linear_attention(q, k, v[:, :, :100], topk=0.5)


def test_dtype_mismatch(qkv):
    q, k, v = qkv
    with pytest.raises((ValueError, TypeError), match=r"\bk\b"):
        sla.sparse_linear_attention(q, k.float(), v, topk=0.5)


def test_unsupported_dtype(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="q"):
        sla.sparse_linear_attention(q.to(torch.int64), k, v, topk=0.5)


def test_not_a_tensor(qkv):
    _, k, v = qkv
    with pytest.raises(TypeError, match="q"):
        sla.sparse_linear_attention([1.0], k, v, topk=0.5)


def test_projection_shape(qkv):
    with pytest.raises(ValueError, match="proj_weight"):
        sla.sparse_linear_attention(*qkv, topk=0.5, proj_weight=torch.zeros(8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="proj_bias"):
        sla.sparse_linear_attention(*qkv, topk=0.5, proj_bias=torch.zeros(3, dtype=torch.float64))


def test_caller_lut_of_the_wrong_shape(qkv):
    bmap = sla.BlockMap.from_lut(torch.zeros(1, 2, 3, 1, dtype=torch.int32), k_blocks=2, block_q=64, block_k=64)
    with pytest.raises(ValueError, match="lut"):
        sla.sparse_linear_attention(*qkv, topk=0.5, block_map=bmap)


def test_backward_without_saved_state_is_explained(qkv):
    q, k, v = (t.clone().requires_grad_() for t in qkv)
    bmap = sla.block_map(q, k, topk=0.5)
    o = torch.ops.sla.forward(q, k, v, None, None, *bmap.tables(), 64, 64, "global", "softmax", 0.0, 1e-5, False)[0]
    with pytest.raises(RuntimeError, match="save_for_backward"):
        o.sum().backward()


def test_op_level_string_options(qkv):
    q, k, _ = qkv
    with pytest.raises(ValueError, match="variant"):
        torch.ops.sla.block_map(q, k, 64, 64, 0.5, 0.0, "paper", True)


def test_the_cpu_forward_saves_o_lin_and_the_cpu_backward_needs_it(qkv):
    q, k, v = qkv
    bmap = sla.block_map(q, k, topk=0.5).with_inverse()
    options = (64, 64, "global", "softmax", 0.0, 1e-5)
    o, lse, o_lin, lin_h, lin_z, o_sparse = torch.ops.sla.forward(q, k, v, None, None, *bmap.tables(), *options, True)
    assert o_lin.shape == (1, 2, 128, 16)  # the CUDA forward leaves it out: its backward does not read it
    saved = (lse, o_lin.new_empty(0), lin_h, lin_z, o_sparse)
    with pytest.raises(ValueError, match="o_lin: absent; expected the forward's O_l .* which the CPU backward reads"):
        torch.ops.sla.backward(torch.ones_like(o), q, k, v, None, None, *bmap.tables(), o, *saved, *options)
