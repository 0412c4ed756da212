"""Autograd of torch.ops.sla.forward: its backward is the torch.ops.sla.backward op (docs/SPEC.md section 5).

Gradients flow to q, k, v, proj_weight and proj_bias; the block-map tables and the options get none (docs/SPEC.md 1.7).
Double backward is not supported.
"""

from __future__ import annotations

import torch

_NUM_MAP_TABLES = 8
_NUM_OPTIONS = 8  # block_q, block_k, topk, negligible, variant, feature_map, scale, eps


def _setup_context(ctx, inputs, output):
    q, k, v, proj_weight, proj_bias = inputs[:5]
    tables = inputs[5 : 5 + _NUM_MAP_TABLES]
    options = inputs[5 + _NUM_MAP_TABLES : 5 + _NUM_MAP_TABLES + _NUM_OPTIONS]
    save_for_backward = inputs[-1]
    o, lse, o_lin, lin_h, lin_z = output
    ctx.mark_non_differentiable(lse, o_lin, lin_h, lin_z)
    ctx.save_for_backward(q, k, v, proj_weight, proj_bias, *tables, o, lse, o_lin, lin_h, lin_z)
    ctx.options = options
    ctx.saved_state = save_for_backward


def _backward(ctx, grad_o, *unused_saved_grads):
    if not ctx.saved_state:
        raise RuntimeError(
            "sla.forward: backward needs save_for_backward=True in the forward call (the functional API sets it "
            "whenever an input requires grad)"
        )
    q, k, v, proj_weight, proj_bias, *rest = ctx.saved_tensors
    tables = rest[:_NUM_MAP_TABLES]
    o, lse, o_lin, lin_h, lin_z = rest[_NUM_MAP_TABLES:]
    if tables[4].numel() == 0:
        raise RuntimeError(
            "sla.forward: backward needs the inverse block-map tables (inv_offset, inv_index); compute the block "
            "map with with_inverse=True or use BlockMap.with_inverse()"
        )
    dq, dk, dv, d_weight, d_bias = torch.ops.sla.backward(
        grad_o, q, k, v, proj_weight, proj_bias, *tables, o, lse, o_lin, lin_h, lin_z, *ctx.options
    )
    return (
        dq,
        dk,
        dv,
        d_weight if proj_weight is not None else None,
        d_bias if proj_bias is not None else None,
        *([None] * (_NUM_MAP_TABLES + _NUM_OPTIONS + 1)),
    )


torch.library.register_autograd("sla::forward", _backward, setup_context=_setup_context)
