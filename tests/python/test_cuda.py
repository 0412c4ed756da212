"""The CUDA backend through the PyTorch package (skipped without a CUDA device or a CUDA build).

Accuracy follows FlashAttention's rule: against an fp64 reference, our error in bf16/fp16 must be at most twice the
error of the same reference computed by PyTorch in that dtype (plus the dtype's rounding of the result), for O and
for every gradient.
"""

from __future__ import annotations

import pytest
import torch

import sla

import reference
from conftest import make_qkv, masks_of, requires_cuda, to_bhld

pytestmark = requires_cuda


def rounding_floor(ref: torch.Tensor, dtype: torch.dtype) -> float:
    # What storing the exact result in `dtype` costs, as in FlashAttention's tests.
    return 2 * ((ref.to(dtype).double() + 0.3 - 0.3) - ref).abs().max().item()


def run_reference(q, k, v, w, b, bmap, d_o, *, layout, variant, phi, dtype):
    """O and (dq, dk, dv, dW, db) of the dense reference with inputs cast to `dtype` (fp64 or the low dtype)."""
    critical, negligible = masks_of(bmap)
    critical, negligible = critical.to(q.device), negligible.to(q.device) if negligible is not None else None
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, w, b)]
    rq, rk, rv = (to_bhld(t, layout) for t in leaves[:3])
    o, _, _ = reference.sla_attention(
        rq,
        rk,
        rv,
        critical,
        negligible,
        bq=bmap.block_q,
        bk=bmap.block_k,
        variant=variant,
        phi=phi,
        weight=leaves[3],
        bias=leaves[4],
    )
    o = to_bhld(o, layout)
    o.backward(d_o.to(dtype))
    return o.detach().double(), [t.grad.double() for t in leaves]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.0), ("complement", 0.2)])
@pytest.mark.parametrize("layout,bq,bk", [("BHLD", 64, 64), ("BLHD", 128, 64)])
def test_twice_the_error_of_pytorch(dtype, d, variant, negligible, layout, bq, bk):
    lq, lk = 1000, 1100
    q, k, v = make_qkv(2, 3, lq, lk, d, dtype=dtype, device="cuda", layout=layout, requires_grad=True)
    w = (0.2 * torch.randn(d, d)).cuda().requires_grad_()
    b = (0.2 * torch.randn(d)).cuda().requires_grad_()
    o, bmap = sla.sparse_linear_attention(
        q,
        k,
        v,
        topk=0.2,
        block_q=bq,
        block_k=bk,
        variant=variant,
        negligible=negligible,
        layout=layout,
        proj_weight=w,
        proj_bias=b,
        return_block_map=True,
    )
    d_o = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v, w, b), d_o)
    kwargs = dict(layout=layout, variant=variant, phi="softmax")
    ref_o, ref_grads = run_reference(q, k, v, w, b, bmap, d_o, dtype=torch.float64, **kwargs)
    low_o, low_grads = run_reference(q, k, v, w, b, bmap, d_o, dtype=dtype, **kwargs)

    def check(name, ours, ref, low):
        ours = ours.double()
        assert torch.isfinite(ours).all(), name
        err = (ours - ref).abs().max().item()
        bound = 2 * (low - ref).abs().max().item() + rounding_floor(ref, dtype)
        assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e}"

    check("o", o, ref_o, low_o)
    for name, g, r, lo in zip(("dq", "dk", "dv", "dW", "db"), grads, ref_grads, low_grads):
        check(name, g, r, lo)


@pytest.mark.parametrize("phi", ["elu", "relu"])
def test_feature_maps(phi):
    q, k, v = make_qkv(1, 2, 700, 700, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    w = (0.2 * torch.randn(64, 64)).cuda().requires_grad_()
    b = (0.2 * torch.randn(64)).cuda().requires_grad_()
    o, bmap = sla.sparse_linear_attention(
        q, k, v, topk=0.3, feature_map=phi, proj_weight=w, proj_bias=b, return_block_map=True
    )
    d_o = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v, w, b), d_o)
    kwargs = dict(layout="BHLD", variant="global", phi=phi)
    ref_o, ref_grads = run_reference(q, k, v, w, b, bmap, d_o, dtype=torch.float64, **kwargs)
    low_o, low_grads = run_reference(q, k, v, w, b, bmap, d_o, dtype=torch.bfloat16, **kwargs)
    for name, ours, ref, low in zip(
        ("o", "dq", "dk", "dv", "dW", "db"), (o, *grads), (ref_o, *ref_grads), (low_o, *low_grads)
    ):
        err = (ours.double() - ref).abs().max().item()
        bound = 2 * (low - ref).abs().max().item() + rounding_floor(ref, torch.bfloat16)
        assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e}"


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.2)])
def test_backward_needs_no_inverse_tables(monkeypatch, variant, negligible):
    # The CUDA backward builds its own inverse tables from the checked LUT: the functional layer must not build them
    # for CUDA tensors (with_inverse() fails the test here for a CUDA map), the backward must accept a map without
    # them, and its gradients must be bitwise those of the same map with them (the kernels use no atomics).
    q, k, v = make_qkv(2, 3, 700, 900, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    w = (0.2 * torch.randn(64, 64)).cuda().requires_grad_()
    b = (0.2 * torch.randn(64)).cuda().requires_grad_()
    rule = dict(topk=0.3, variant=variant, negligible=negligible)
    full = sla.block_map(q, k, **rule)  # with_inverse=True by default: the tables the backward used to get
    bare = sla.block_map(q, k, with_inverse=False, **rule)
    assert full.has_inverse and not bare.has_inverse
    assert torch.equal(full.lut, bare.lut) and torch.equal(full.count, bare.count)

    calls = []
    real_with_inverse = sla.BlockMap.with_inverse

    def no_cuda_inversion(self):
        calls.append(self.lut.device.type)
        if self.lut.is_cuda:
            raise AssertionError("with_inverse() called for a CUDA map: the CUDA backward builds its own")
        return real_with_inverse(self)

    monkeypatch.setattr(sla.BlockMap, "with_inverse", no_cuda_inversion)
    layer = dict(variant=variant, proj_weight=w, proj_bias=b)
    d_o = torch.randn(2, 3, 700, 64, device="cuda", dtype=torch.bfloat16)
    inputs = (q, k, v, w, b)

    o_full = sla.sparse_linear_attention(q, k, v, block_map=full, **layer)
    g_full = torch.autograd.grad(o_full, inputs, d_o)
    o_bare, used = sla.sparse_linear_attention(q, k, v, block_map=bare, return_block_map=True, **layer)
    assert used is bare  # the map the ops got: no inverse tables
    g_bare = torch.autograd.grad(o_bare, inputs, d_o)
    # The predicted path: the block_map op is asked for no inverse tables either.
    o_pred, pred = sla.sparse_linear_attention(q, k, v, return_block_map=True, topk=0.3, negligible=negligible, **layer)
    assert not pred.has_inverse and pred.inv_offset.numel() == 0 and pred.inv_index.numel() == 0
    assert torch.equal(pred.lut, full.lut) and torch.equal(pred.count, full.count)
    g_pred = torch.autograd.grad(o_pred, inputs, d_o)
    assert calls == []

    assert torch.equal(o_bare, o_full) and torch.equal(o_pred, o_full)
    for name, a, c, p in zip(("dq", "dk", "dv", "dW", "db"), g_bare, g_full, g_pred):
        assert torch.isfinite(c).all() and c.abs().max() > 0, name
        assert torch.equal(a, c), f"{name}: differs without the inverse tables (caller's map)"
        assert torch.equal(p, c), f"{name}: differs without the inverse tables (predicted map)"


def test_block_map_matches_the_cpu_backend():
    q, k, _ = make_qkv(2, 4, 3000, 2900, 128, dtype=torch.bfloat16)
    gpu = sla.block_map(q.cuda(), k.cuda(), topk=0.1, block_q=128, block_k=64)
    ref = reference.block_map(q, k, 128, 64, 0.1)
    from test_block_map import assert_is_topk

    cpu_like = gpu._replace(lut=gpu.lut.cpu(), count=gpu.count.cpu())
    assert_is_topk(cpu_like, ref, gpu.real_topk, tol=1e-4)


def test_runs_on_the_current_stream():
    q, k, v = make_qkv(1, 4, 2048, 2048, 128, dtype=torch.bfloat16, device="cuda")
    expected = sla.sparse_linear_attention(q, k, v, topk=0.1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        o = sla.sparse_linear_attention(q, k, v, topk=0.1)
    side.synchronize()
    assert torch.equal(o, expected)


def test_cuda_graph_capture_of_the_forward():
    layer = sla.SparseLinearAttention(128, 0.1).cuda()
    with torch.no_grad():
        layer.proj_l.weight.normal_(std=0.05)
    shape = (1, 4, 2048, 128)
    static = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm up allocator pools outside the capture
            layer(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = layer(*static)
    for _ in range(2):
        fresh = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        for s, f in zip(static, fresh):
            s.copy_(f)
        graph.replay()
        with torch.no_grad():
            expected = layer(*fresh)
        assert torch.equal(out, expected)


def test_compiled_transformer_block_matches_eager():
    heads, d = 4, 64

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(heads * d)
            self.qkv = torch.nn.Linear(heads * d, 3 * heads * d)
            self.attn = sla.SparseLinearAttention(d, 0.2, layout="BLHD")
            torch.nn.init.normal_(self.attn.proj_l.weight, std=0.05)
            self.out = torch.nn.Linear(heads * d, heads * d)

        def forward(self, x):
            b, length, _ = x.shape
            q, k, v = self.qkv(self.norm(x)).view(b, length, 3, heads, d).unbind(2)
            o = self.attn(q, k, v)
            return x + self.out(o.reshape(b, length, heads * d))

    block = Block().cuda()
    x = torch.randn(2, 1500, heads * d, device="cuda")
    eager = block(x)
    eager.square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    torch._dynamo.reset()
    out = torch.compile(block, fullgraph=True)(x)
    out.square().mean().backward()

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    # Inductor may fuse the layers around the attention differently (fp32 reassociation), which bf16 attention
    # inputs can turn into a few bf16 ulps.
    assert rel(out, eager) < 1e-2
    for n, p in block.named_parameters():
        assert rel(p.grad, eager_grads[n]) < 2e-2, n


def test_fp32_inputs_are_rejected_with_a_clear_error():
    q, k, v = make_qkv(1, 1, 256, 256, 64, dtype=torch.float32, device="cuda")
    with pytest.raises((NotImplementedError, ValueError), match="dtype|q"):
        sla.sparse_linear_attention(q, k, v, topk=0.5)


@pytest.mark.parametrize("variant,negligible", [("global", 0.0), ("complement", 0.2)])
def test_opcheck_on_cuda(variant, negligible):
    q, k, v = make_qkv(1, 2, 700, 900, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    w = (0.1 * torch.randn(64, 64, device="cuda")).requires_grad_()
    b = (0.1 * torch.randn(64, device="cuda")).requires_grad_()
    torch.library.opcheck(torch.ops.sla.block_map.default, (q, k, 64, 64, 0.3, negligible, variant, True))
    bmap = sla.block_map(q, k, topk=0.3, variant=variant, negligible=negligible)
    options = (64, 64, variant, "softmax", 0.0, 1e-5)
    torch.library.opcheck(
        torch.ops.sla.invert_block_map.default, (bmap.lut, bmap.count, bmap.negl_lut, bmap.negl_count, bmap.k_blocks)
    )
    torch.library.opcheck(torch.ops.sla.forward.default, (q, k, v, w, b, *bmap.tables(), *options, True))
    o, lse, o_lin, lin_h, lin_z, o_sparse = torch.ops.sla.forward(q, k, v, w, b, *bmap.tables(), *options, True)
    # The CUDA backward does not read O_l, so the CUDA forward does not save it (the CPU one does).
    assert o_lin.numel() == 0 and lse.shape == (1, 2, 700) and lin_h.shape == (1, 2, 64, 64)
    args = (
        torch.randn_like(o),
        q.detach(),
        k.detach(),
        v.detach(),
        w.detach(),
        b.detach(),
        *bmap.tables(),
        o.detach(),
        lse,
        o_lin,
        lin_h,
        lin_z,
        o_sparse,
        *options,
    )
    torch.library.opcheck(torch.ops.sla.backward.default, args)


@pytest.mark.parametrize("use_bf16", [True, False])
def test_module_computes_in_the_low_dtype_and_returns_the_input_dtype(use_bf16):
    low = torch.bfloat16 if use_bf16 else torch.float16
    layer = sla.SparseLinearAttention(64, 0.25, use_bf16=use_bf16).cuda()
    with torch.no_grad():
        layer.proj_l.weight.normal_(std=0.05)
    q, k, v = make_qkv(1, 2, 600, 600, 64, dtype=torch.float32, device="cuda")
    o, density = layer(q, k, v, return_sparsity=True)
    assert o.dtype == torch.float32 and density == 2 / 10
    expected = sla.sparse_linear_attention(
        q.to(low), k.to(low), v.to(low), topk=0.25, proj_weight=layer.proj_l.weight, proj_bias=layer.proj_l.bias
    )
    assert torch.equal(o, expected.float())
