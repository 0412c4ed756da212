"""torch.compile(fullgraph=True) through the ops' fake kernels and autograd formula: no graph breaks, and the same
forward and gradients as eager (CPU)."""

from __future__ import annotations

import pytest
import torch

import sla

from conftest import make_projection, make_qkv


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("variant,layout", [("global", "BHLD"), ("complement", "BLHD")])
def test_functional_forward_backward(variant, layout):
    q, k, v = make_qkv(1, 2, 200, 260, 16, dtype=torch.float32, layout=layout, requires_grad=True)
    w, b = make_projection(16, dtype=torch.float32, requires_grad=True)

    def layer(q, k, v, w, b):
        o = sla.sparse_linear_attention(q, k, v, topk=0.3, variant=variant, layout=layout, proj_weight=w, proj_bias=b)
        return (o * o).sum()

    compiled = torch.compile(layer, fullgraph=True)
    eager_loss = layer(q, k, v, w, b)
    eager_grads = torch.autograd.grad(eager_loss, (q, k, v, w, b))
    loss = compiled(q, k, v, w, b)
    grads = torch.autograd.grad(loss, (q, k, v, w, b))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_module_in_a_compiled_block():
    heads, d = 2, 16

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(heads * d, 3 * heads * d)
            self.attn = sla.SparseLinearAttention(d, 0.3, layout="BLHD")
            torch.nn.init.normal_(self.attn.proj_l.weight, std=0.1)
            self.out = torch.nn.Linear(heads * d, heads * d)

        def forward(self, x):
            b, length, _ = x.shape
            q, k, v = self.qkv(x).view(b, length, 3, heads, d).unbind(2)
            o = self.attn(q, k, v)
            return x + self.out(o.reshape(b, length, heads * d))

    block = Block()
    x = torch.randn(2, 150, heads * d)
    eager = block(x)
    eager.square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for n, p in block.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_inference_under_no_grad():
    q, k, v = make_qkv(1, 2, 200, 200, 16, dtype=torch.float32)

    @torch.compile(fullgraph=True)
    def layer(q, k, v):
        return sla.sparse_linear_attention(q, k, v, topk=0.3)

    with torch.no_grad():
        torch.testing.assert_close(layer(q, k, v), sla.sparse_linear_attention(q, k, v, topk=0.3))
