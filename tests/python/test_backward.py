"""Gradients of sla.sparse_linear_attention on the CPU in float64 (docs/SPEC.md section 5, invariant 7.5): against
finite differences (torch.autograd.gradcheck) and against autograd through the dense reference, with the block map
held fixed."""

from __future__ import annotations

import math
import types

import pytest
import torch

import sla

import reference
from conftest import make_projection, make_qkv, masks_of, to_bhld

TOL = dict(rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.0), ("complement", 0.25)])
def test_gradcheck(variant, negligible):
    # Nk = 4 (ragged), T = 1, Tn = 1 for the negligible case: every class of block is present.
    q, k, v = make_qkv(1, 1, 70, 200, 8, requires_grad=True)
    w, b = make_projection(8, requires_grad=True)
    bmap = sla.block_map(q, k, topk=0.25, variant=variant, negligible=negligible)
    assert bmap.negl_lut.shape[-1] == (1 if negligible else 0)

    def layer(q, k, v, w, b):
        return sla.sparse_linear_attention(
            q, k, v, topk=0.25, variant=variant, block_map=bmap, proj_weight=w, proj_bias=b
        )

    assert torch.autograd.gradcheck(layer, (q, k, v, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("phi", ["elu", "relu"])
def test_gradcheck_feature_maps(phi):
    q, k, v = make_qkv(1, 1, 70, 130, 8, requires_grad=True)
    w, b = make_projection(8, requires_grad=True)
    bmap = sla.block_map(q, k, topk=0.5)

    def layer(q, k, v, w, b):
        return sla.sparse_linear_attention(
            q, k, v, topk=0.5, feature_map=phi, block_map=bmap, proj_weight=w, proj_bias=b
        )

    assert torch.autograd.gradcheck(layer, (q, k, v, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def reference_grads(q, k, v, w, b, bmap, d_o, *, layout, bq, bk, variant, phi, scale=None):
    critical, negligible = masks_of(bmap)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w, b)]
    rq, rk, rv = (to_bhld(t, layout) for t in leaves[:3])
    o, _, _ = reference.sla_attention(
        rq,
        rk,
        rv,
        critical,
        negligible,
        bq=bq,
        bk=bk,
        variant=variant,
        phi=phi,
        scale=scale,
        weight=leaves[3],
        bias=leaves[4],
    )
    o = to_bhld(o, layout)
    o.backward(d_o)
    return o.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.0), ("complement", 0.3)])
@pytest.mark.parametrize("phi", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("layout", ["BHLD", "BLHD"])
def test_matches_reference_autograd(variant, negligible, phi, layout):
    bq, bk = 64, 128
    q, k, v = make_qkv(2, 2, 190, 420, 16, layout=layout, requires_grad=True)
    w, b = make_projection(16, requires_grad=True)
    o, bmap = sla.sparse_linear_attention(
        q,
        k,
        v,
        topk=0.3,
        block_q=bq,
        block_k=bk,
        feature_map=phi,
        variant=variant,
        negligible=negligible,
        layout=layout,
        proj_weight=w,
        proj_bias=b,
        return_block_map=True,
    )
    d_o = torch.randn_like(o)
    o.backward(d_o)
    ref_o, ref_grads = reference_grads(q, k, v, w, b, bmap, d_o, layout=layout, bq=bq, bk=bk, variant=variant, phi=phi)
    torch.testing.assert_close(o.detach(), ref_o, **TOL)
    for name, ours, ref in zip(("dq", "dk", "dv", "dW", "db"), (q.grad, k.grad, v.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(ours, ref, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("lq,lk", [(37, 300), (300, 37), (1000, 1000)])
def test_ragged_gradients(lq, lk):
    q, k, v = make_qkv(1, 2, lq, lk, 16, requires_grad=True)
    w, b = make_projection(16, requires_grad=True)
    o, bmap = sla.sparse_linear_attention(
        q, k, v, topk=0.3, scale=0.2, proj_weight=w, proj_bias=b, return_block_map=True
    )
    d_o = torch.randn_like(o)
    o.backward(d_o)
    _, ref_grads = reference_grads(
        q, k, v, w, b, bmap, d_o, layout="BHLD", bq=64, bk=64, variant="global", phi="softmax", scale=0.2
    )
    for ours, ref in zip((q.grad, k.grad, v.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("variant", ["global", "complement"])
def test_topk_one_gradients_are_dense_attention(variant):
    # Invariant 7.1 for gradients (W = b = 0).
    q, k, v = make_qkv(1, 2, 150, 190, 16, requires_grad=True)
    o = sla.sparse_linear_attention(q, k, v, topk=1.0, variant=variant)
    d_o = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), d_o)
    dense = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) @ v
    ref = torch.autograd.grad(dense, (q, k, v), d_o)
    for ours, r in zip(grads, ref):
        torch.testing.assert_close(ours, r, **TOL)


def test_zero_projection_still_gets_gradients():
    # Invariant 7.2: with W = b = 0 only W and b receive gradient from the linear branch, and they do receive it.
    q, k, v = make_qkv(1, 2, 200, 200, 16, requires_grad=True)
    w = torch.zeros(16, 16, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(16, dtype=torch.float64, requires_grad=True)
    o, bmap = sla.sparse_linear_attention(q, k, v, topk=0.3, proj_weight=w, proj_bias=b, return_block_map=True)
    d_o = torch.randn_like(o)
    o.backward(d_o)
    critical, _ = masks_of(bmap)
    o_l = reference.linear_branch(q.detach(), k.detach(), v.detach(), None, "softmax", 1e-5)
    torch.testing.assert_close(w.grad, torch.einsum("bhlo,bhli->oi", d_o, o_l), **TOL)
    torch.testing.assert_close(b.grad, d_o.sum(dim=(0, 1, 2)), **TOL)
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o_s = reference.sparse_branch(qs, ks, vs, reference.expand_blocks(critical, 200, 200, 64, 64), 0.25)
    ref = torch.autograd.grad(o_s, (qs, ks, vs), d_o)
    for ours, r in zip((q.grad, k.grad, v.grad), ref):
        torch.testing.assert_close(ours, r, **TOL)


def test_float32_module_parameters_get_float32_gradients():
    # float64 inputs compute the projection in float64; the fp32 parameters get their gradients cast back.
    q, k, v = make_qkv(1, 2, 128, 128, 16, requires_grad=True)
    layer = sla.SparseLinearAttention(16, 0.5)
    with torch.no_grad():
        layer.proj_l.weight.normal_()
    layer(q, k, v).sum().backward()
    assert layer.proj_l.weight.grad.dtype == torch.float32 and layer.proj_l.bias.grad.dtype == torch.float32
    assert layer.proj_l.weight.grad.abs().sum() > 0


def test_backward_is_deterministic():
    q, k, v = make_qkv(2, 2, 300, 300, 32, dtype=torch.float32, requires_grad=True)
    w, b = make_projection(32, dtype=torch.float32, requires_grad=True)
    d_o = torch.randn(2, 2, 300, 32)

    def grads():
        o = sla.sparse_linear_attention(q, k, v, topk=0.2, proj_weight=w, proj_bias=b)
        return torch.autograd.grad(o, (q, k, v, w, b), d_o)

    first = grads()
    for _ in range(2):
        for a, b_ in zip(first, grads()):
            assert torch.equal(a, b_)


def test_expanded_grad_output():
    # o.sum() hands backward an expanded (stride 0) gradient: the op must copy it, not reject it.
    q, k, v = make_qkv(1, 2, 100, 100, 16, requires_grad=True)
    sla.sparse_linear_attention(q, k, v, topk=0.5).sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    sla.sparse_linear_attention(*ref, topk=0.5).backward(torch.ones(1, 2, 100, 16, dtype=torch.float64))
    for ours, r in zip((q.grad, k.grad, v.grad), ref):
        assert torch.equal(ours, r.grad)


# ---- the inverse tables: built for the CPU backward, which reads them; not for CUDA inputs, whose backward builds
# its own from the checked LUT (include/sla/sla.h, BackwardArgs)


def spy_with_inverse(monkeypatch, *, fail_off_cpu=False):
    """Records the device of every BlockMap.with_inverse call (which still builds the tables); with `fail_off_cpu`,
    a call for a map that is not on the CPU fails the test."""
    calls = []
    real = sla.BlockMap.with_inverse

    def spy(self):
        calls.append(self.lut.device.type)
        if fail_off_cpu and self.lut.device.type != "cpu":
            raise AssertionError(f"with_inverse() called for a {self.lut.device.type} map")
        return real(self)

    monkeypatch.setattr(sla.BlockMap, "with_inverse", spy)
    return calls


def test_cpu_training_builds_and_uses_the_inverse_tables(monkeypatch):
    q, k, v = make_qkv(1, 2, 150, 200, 8, requires_grad=True)
    bare = sla.block_map(q, k, topk=0.5, with_inverse=False)
    full = bare.with_inverse()
    calls = spy_with_inverse(monkeypatch)

    # Predicted map: built by the block_map op itself (no with_inverse call), equal to what with_inverse() builds.
    o, bmap = sla.sparse_linear_attention(q, k, v, topk=0.5, return_block_map=True)
    assert bmap.has_inverse and calls == []
    assert torch.equal(bmap.lut, bare.lut)
    assert torch.equal(bmap.inv_offset, full.inv_offset) and torch.equal(bmap.inv_index, full.inv_index)

    # A caller's map without them gets them, and the same gradients as the map that had them.
    d_o = torch.randn_like(o)
    o1, used = sla.sparse_linear_attention(q, k, v, block_map=bare, return_block_map=True)
    assert calls == ["cpu"] and used.has_inverse
    assert torch.equal(used.inv_offset, full.inv_offset) and torch.equal(used.inv_index, full.inv_index)
    g_built = torch.autograd.grad(o1, (q, k, v), d_o)
    o2, used = sla.sparse_linear_attention(q, k, v, block_map=full, return_block_map=True)
    assert used is full  # with_inverse() of a map that has them is the map itself
    g_given = torch.autograd.grad(o2, (q, k, v), d_o)
    for a, b in zip(g_built, g_given):
        assert torch.equal(a, b)

    # Inference builds none.
    del calls[:]
    with torch.no_grad():
        _, used = sla.sparse_linear_attention(q, k, v, block_map=bare, return_block_map=True)
    assert not used.has_inverse and calls == []
    _, used = sla.sparse_linear_attention(q.detach(), k.detach(), v.detach(), topk=0.5, return_block_map=True)
    assert not used.has_inverse


def test_cpu_backward_without_inverse_tables_fails_clearly():
    q, k, v = make_qkv(1, 2, 150, 200, 8, requires_grad=True)
    bare = sla.block_map(q, k, topk=0.5, with_inverse=False)
    options = (bare.block_q, bare.block_k, "global", "softmax", 0.0, 1e-5)
    o, *saved = torch.ops.sla.forward(q, k, v, None, None, *bare.tables(), *options, True)
    # Autograd checks before calling the op.
    with pytest.raises(RuntimeError, match=r"backward needs the inverse block-map tables \(inv_offset, inv_index\)"):
        o.sum().backward()
    # The op itself: the library names the table, the shapes expected and how to build them. By hand: Nk + 1 =
    # ceil(200 / 64) + 1 = 5, Nq * T = ceil(150 / 64) * floor(0.5 * 4) = 3 * 2 = 6.
    args = (torch.ones_like(o), q.detach(), k.detach(), v.detach(), None, None, *bare.tables(), o.detach(), *saved)
    with pytest.raises(
        ValueError,
        match=r"map\.inv_offset: required but absent; the CPU backward reads the inverse tables: expected "
        r"map\.inv_offset \(B, H, Nk \+ 1\) = \(1, 2, 5\) and map\.inv_index \(B, H, Nq \* T\) = \(1, 2, 6\), "
        r"filled from the LUT by invert_block_map .*BlockMap\.with_inverse\(\)",
    ):
        torch.ops.sla.backward(*args, *options)
    # With the tables the same call runs.
    full = bare.with_inverse()
    args = (torch.ones_like(o), q.detach(), k.detach(), v.detach(), None, None, *full.tables(), o.detach(), *saved)
    dq, dk, dv, _, _ = torch.ops.sla.backward(*args, *options)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def fake_cuda_mode():
    """A FakeTensorMode in which CUDA tensors can be made without a GPU (shapes and devices only), or a skip."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    try:
        with mode:
            torch.empty(1, device="cuda")
    except Exception as exc:  # noqa: BLE001 - whatever this torch build raises for fake CUDA tensors
        pytest.skip(f"this torch cannot fake CUDA tensors here: {exc}")
    return mode


def test_cuda_inputs_get_no_inverse_tables_when_training(monkeypatch):
    # Traced with fake CUDA tensors: the functional layer's choice of tables runs on any machine (tests/python/
    # test_cuda.py runs the real backward on a GPU). A CUDA map must never be inverted for the backward.
    mode = fake_cuda_mode()
    calls = spy_with_inverse(monkeypatch, fail_off_cpu=True)
    with mode:
        q, k, v = (torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
        o, bmap = sla.sparse_linear_attention(q, k, v, topk=0.5, return_block_map=True)
        assert o.requires_grad and o.device.type == "cuda"
        assert bmap.lut.device.type == "cuda" and bmap.lut.shape == (1, 2, 5, 2)
        assert not bmap.has_inverse and bmap.inv_index.shape == (1, 2, 0)
        bare = sla.block_map(q, k, topk=0.5, with_inverse=False)
        o, used = sla.sparse_linear_attention(q, k, v, block_map=bare, return_block_map=True)
        assert o.requires_grad and used is bare

        # The autograd formula hands such a map to the backward op instead of raising (the fake autograd engine
        # cannot run a CUDA backward without a GPU, so the formula is called directly, with a context as
        # _setup_context fills it).
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        options = (bare.block_q, bare.block_k, "global", "softmax", 0.0, 1e-5)
        saved = torch.ops.sla.forward(qd, kd, vd, None, None, *bare.tables(), *options, True)
        ctx = types.SimpleNamespace(
            saved_state=True, options=options, saved_tensors=(qd, kd, vd, None, None, *bare.tables(), *saved)
        )
        grads = sla._autograd._backward(ctx, torch.ones_like(saved[0]))
        assert [g.shape for g in grads[:3]] == [q.shape, k.shape, v.shape] and grads[3] is None
    assert calls == []
