"""test_bad_values.py on the GPU (skipped without a CUDA device or a CUDA build): non-finite inputs propagate on
both forward mainloops and through the backward pass; malformed caller block maps never make a kernel read out of
bounds, turn the affected head's outputs into NaN (the device check needs no host synchronisation) and raise
through sla.check_block_map; forward-mode AD, double backward and mixed devices raise.

The forward mainloop (wgmma or mma.sync on Hopper) is chosen once per process from SLA_CUDA_MAINLOOP; run this file
once more with SLA_CUDA_MAINLOOP=mma to cover both. tests/cuda/test_bad_lut checks the same under
compute-sanitizer."""

from __future__ import annotations

import math

import pytest
import torch

import sla

from conftest import make_projection, make_qkv, requires_cuda

pytestmark = requires_cuda

DT = torch.bfloat16
D = 128


def dense_attention(q, k, v):
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v.double()


def cuda_qkv(lq=200, lk=300, h=2, requires_grad=False):
    q, k, v = make_qkv(1, h, lq, lk, D, dtype=DT, device="cuda")
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


@pytest.mark.parametrize("variant", ["global", "complement"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_input_propagates_like_dense_attention(variant, value, where):
    q, k, v = cuda_qkv()
    t = {"q": q, "k": k, "v": v}[where]
    t[0, 0, 5, 3] = value
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant=variant)
    ref = dense_attention(q, k, v)
    assert not torch.isfinite(ref).all()
    assert torch.equal(torch.isnan(o), torch.isnan(ref))
    assert torch.equal(torch.isinf(o), torch.isinf(ref))
    assert not torch.isnan(o[:, 1]).any()


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_nan_in_q_propagates_through_the_linear_branch_and_backward(variant):
    q, k, v = cuda_qkv(requires_grad=True)
    w, b = make_projection(D, dtype=torch.float32)
    w, b = w.cuda().requires_grad_(), b.cuda().requires_grad_()
    with torch.no_grad():
        q[0, 0, 5, 3] = float("nan")
    o = sla.sparse_linear_attention(q, k, v, topk=0.5, variant=variant, proj_weight=w, proj_bias=b)
    assert torch.isnan(o[0, 0, 5]).all()
    assert torch.isfinite(o[0, 1]).all()
    o.float().sum().backward()
    assert torch.isnan(q.grad[0, 0, 5]).all()
    assert torch.isfinite(q.grad[0, 1]).all() and torch.isfinite(k.grad[0, 1]).all()
    assert torch.isnan(w.grad).any()


def test_empty_row_is_still_zero():
    q, k, v = cuda_qkv(lq=128, lk=128, h=1)
    lut = torch.tensor([[[[0], [1]]]], dtype=torch.int32, device="cuda")
    count = torch.tensor([[[1, 0]]], dtype=torch.int32, device="cuda")
    bmap = sla.BlockMap.from_lut(lut, count=count, k_blocks=2, block_q=64, block_k=64)
    o = sla.sparse_linear_attention(q, k, v, topk=0.5, block_map=bmap)
    assert torch.equal(o[0, 0, 64:], torch.zeros_like(o[0, 0, 64:]))
    assert torch.isfinite(o).all()


# ---- malformed caller block maps: NaN in the affected head, an error from check_block_map -----------------------

BAD = {
    "entry out of range": lambda m: m.lut[0, 1, 2].__setitem__(0, m.k_blocks),
    "entry far out of range": lambda m: m.lut[0, 1, 2].__setitem__(0, 2**31 - 1),
    "negative entry": lambda m: m.lut[0, 1, 2].__setitem__(1, -(2**31)),
    "repeated entry": lambda m: m.lut[0, 1, 2].__setitem__(1, int(m.lut[0, 1, 2, 0])),
    "count above T": lambda m: m.count[0, 1].__setitem__(2, m.real_topk + 1),
    "count below 0": lambda m: m.count[0, 1].__setitem__(2, -1),
}


def clone_map(bmap):
    return bmap._replace(**{f: getattr(bmap, f).clone() for f in bmap._fields[:8]})


@pytest.mark.parametrize("name", list(BAD))
def test_bad_lut_poisons_only_its_head(name):
    q, k, v = cuda_qkv(requires_grad=True)
    w, b = make_projection(D, dtype=torch.float32)
    w, b = w.cuda().requires_grad_(), b.cuda().requires_grad_()
    good = sla.block_map(q, k, topk=0.4)
    o_good = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=good, proj_weight=w, proj_bias=b)
    (gq_good,) = torch.autograd.grad(o_good.float().sum(), q)
    bad = clone_map(good)
    BAD[name](bad)
    with pytest.raises(ValueError, match=r"map\.(lut|count): row \(b=0, h=1, i=2\)"):
        sla.check_block_map(bad)
    o = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=bad, proj_weight=w, proj_bias=b)
    assert torch.isnan(o[0, 1]).all()
    assert torch.equal(o[0, 0], o_good[0, 0])
    gq, gk, gv, gw, gb = torch.autograd.grad(o.float().sum(), (q, k, v, w, b))
    for g in (gq, gk, gv):
        assert torch.isnan(g[0, 1]).all()
    assert torch.equal(gq[0, 0], gq_good[0, 0])
    assert torch.isnan(gw).all() and torch.isnan(gb).all()
    torch.cuda.synchronize()  # a kernel fault would surface here


def test_bad_negligible_set_poisons_only_its_head():
    q, k, v = cuda_qkv()
    good = sla.block_map(q, k, topk=0.4, variant="complement", negligible=0.2)
    bad = clone_map(good)
    bad.negl_lut[0, 1, 2, 0] = bad.lut[0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"map\.negl_lut: row \(b=0, h=1, i=2\) entry 0 is key block"):
        sla.check_block_map(bad)
    o = sla.sparse_linear_attention(
        q, k, v, topk=0.4, variant="complement", block_map=bad, proj_weight=torch.ones(D, D, device="cuda") * 0.01
    )
    assert torch.isnan(o[0, 1]).all() and torch.isfinite(o[0, 0]).all()


def test_permuted_lut_is_accepted():
    q, k, v = cuda_qkv()
    good = sla.block_map(q, k, topk=0.4)
    perm = good._replace(lut=good.lut.flip(-1).contiguous())
    sla.check_block_map(perm)
    o1 = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=good)
    o2 = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=perm)
    torch.testing.assert_close(o1, o2, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(o2).all()


def test_garbage_inverse_tables_are_rebuilt_not_read():
    q, k, v = cuda_qkv(requires_grad=True)
    good = sla.block_map(q, k, topk=0.4)
    o = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=good)
    g_good = torch.autograd.grad(o.float().sum(), (q, k, v))
    bad = good._replace(
        inv_offset=torch.full_like(good.inv_offset, 2**31 - 5), inv_index=torch.full_like(good.inv_index, -(10**9))
    )
    with pytest.raises(ValueError, match=r"map\.inv_offset"):
        sla.check_block_map(bad)
    o = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=bad)
    g_bad = torch.autograd.grad(o.float().sum(), (q, k, v))
    for a, b in zip(g_bad, g_good):
        assert torch.equal(a, b)


def test_bad_lut_under_cuda_graph_capture():
    # The device check needs no host synchronisation: the call captures, and replays poison the bad head.
    q, k, v = cuda_qkv()
    bad = clone_map(sla.block_map(q, k, topk=0.4))
    bad.lut[0, 1, 0, 0] = -3
    sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=bad)  # warm-up (allocator, lazy init)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
        o = sla.sparse_linear_attention(q, k, v, topk=0.4, block_map=bad)
    g.replay()
    torch.cuda.synchronize()
    assert torch.isnan(o[0, 1]).all() and torch.isfinite(o[0, 0]).all()


# ---- autograd modes and devices ---------------------------------------------------------------------------------


def test_forward_mode_ad_raises():
    q, k, v = cuda_qkv()
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda x: sla.sparse_linear_attention(x, k, v, topk=0.5), (q,), (torch.ones_like(q),))


def test_double_backward_raises():
    q, k, v = cuda_qkv(requires_grad=True)
    o = sla.sparse_linear_attention(q, k, v, topk=0.5)
    (gq,) = torch.autograd.grad(o.float().square().sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(gq.float().sum(), q)


def test_mixed_devices_raise():
    q, k, v = cuda_qkv()
    with pytest.raises(ValueError, match="k: expected device cuda:0 like q, got cpu"):
        sla.block_map(q, k.cpu(), topk=0.5)
    with pytest.raises(ValueError, match="k: expected device cuda:0 like q, got cpu"):
        torch.ops.sla.block_map(q, k.cpu(), 64, 64, 0.5, 0.0, "global", True)  # the real op, not the Python layer
    bmap = sla.block_map(q, k, topk=0.5)
    with pytest.raises(ValueError, match="v: expected device cuda:0 like q, got cpu"):
        torch.ops.sla.forward(q, k, v.cpu(), None, None, *bmap.tables(), 64, 64, "global", "softmax", 0.0, 1e-5, False)
    with pytest.raises(ValueError, match="k: expected device cuda:0 like q, got meta"):
        torch.ops.sla.block_map(q, k.to("meta"), 64, 64, 0.5, 0.0, "global", True)
    with pytest.raises(ValueError, match="proj_weight: expected device"):
        sla.sparse_linear_attention(q, k, v, topk=0.5, proj_weight=torch.zeros(D, D))
    bmap = sla.block_map(q.cpu(), k.cpu(), topk=0.5)
    with pytest.raises(ValueError, match="block_map.lut: expected device cuda:0 like q"):
        sla.sparse_linear_attention(q, k, v, topk=0.5, block_map=bmap)
