"""torch.library.opcheck on every torch.ops.sla op: schema, fake kernels, autograd registration and AOT dispatch."""

from __future__ import annotations

import pytest
import torch

import sla

from conftest import make_projection, make_qkv


def forward_args(q, k, v, w, b, bmap, *, variant="global", save=True):
    return (
        q,
        k,
        v,
        w,
        b,
        *bmap.tables(),
        bmap.block_q,
        bmap.block_k,
        variant,
        "softmax",
        0.0,
        1e-5,
        save,
    )


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.3)])
@pytest.mark.parametrize("with_inverse", [True, False])
def test_block_map(variant, negligible, with_inverse):
    q, k, _ = make_qkv(2, 2, 200, 300, 16, dtype=torch.float32)
    torch.library.opcheck(torch.ops.sla.block_map.default, (q, k, 64, 64, 0.3, negligible, variant, with_inverse))


def test_invert_block_map():
    q, k, _ = make_qkv(2, 2, 200, 300, 16, dtype=torch.float32)
    bmap = sla.block_map(q, k, topk=0.3, variant="complement", negligible=0.3, with_inverse=False)
    torch.library.opcheck(
        torch.ops.sla.invert_block_map.default, (bmap.lut, bmap.count, bmap.negl_lut, bmap.negl_count, bmap.k_blocks)
    )


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.3)])
@pytest.mark.parametrize("layout", ["BHLD", "BLHD"])
@pytest.mark.parametrize("with_projection", [True, False])
def test_forward(variant, negligible, layout, with_projection):
    q, k, v = make_qkv(1, 2, 130, 200, 16, layout=layout, requires_grad=True)
    if layout == "BLHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    w, b = make_projection(16, requires_grad=True) if with_projection else (None, None)
    bmap = sla.block_map(q, k, topk=0.3, variant=variant, negligible=negligible)
    args = forward_args(q, k, v, w, b, bmap, variant=variant)
    torch.library.opcheck(torch.ops.sla.forward.default, args)


def test_forward_for_inference():
    q, k, v = make_qkv(1, 2, 130, 200, 16)
    bmap = sla.block_map(q, k, topk=0.3, with_inverse=False)
    torch.library.opcheck(torch.ops.sla.forward.default, forward_args(q, k, v, None, None, bmap, save=False))


@pytest.mark.parametrize("with_projection", [True, False])
def test_backward(with_projection):
    q, k, v = make_qkv(1, 2, 130, 200, 16)
    w, b = make_projection(16) if with_projection else (None, None)
    bmap = sla.block_map(q, k, topk=0.3)
    o, lse, o_lin, lin_h, lin_z, o_sparse = torch.ops.sla.forward(*forward_args(q, k, v, w, b, bmap))
    grad_o = torch.randn_like(o)
    args = (
        grad_o,
        q,
        k,
        v,
        w,
        b,
        *bmap.tables(),
        o,
        lse,
        o_lin,
        lin_h,
        lin_z,
        o_sparse,
        64,
        64,
        "global",
        "softmax",
        0.0,
        1e-5,
    )
    torch.library.opcheck(torch.ops.sla.backward.default, args)
