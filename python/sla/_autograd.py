"""Autograd of torch.ops.sla.forward: its backward is the torch.ops.sla.backward op (docs/SPEC.md section 5).

Gradients flow to q, k, v, proj_weight and proj_bias; the block-map tables and the options get none (docs/SPEC.md 1.7).
Neither double backward nor forward-mode AD is implemented; both raise NotImplementedError instead of returning
zeros (torch's default for a custom op without those formulas):
- double backward: torch.ops.sla.backward gets an autograd formula that raises when its own gradient is needed
  (create_graph=True followed by a second grad); a single backward, with or without create_graph, is unaffected;
- forward mode (torch.func.jvp, torch.autograd.forward_ad): the public functions check for tangents on their
  inputs (check_no_forward_ad) before calling the ops.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

_NUM_MAP_TABLES = 8
_NUM_OPTIONS = 6  # block_q, block_k, variant, feature_map, scale, eps (T and Tn are the tables' widths)


def _setup_context(ctx, inputs, output):
    q, k, v, proj_weight, proj_bias = inputs[:5]
    tables = inputs[5 : 5 + _NUM_MAP_TABLES]
    options = inputs[5 + _NUM_MAP_TABLES : 5 + _NUM_MAP_TABLES + _NUM_OPTIONS]
    save_for_backward = inputs[-1]
    o, lse, o_lin, lin_h, lin_z, o_sparse = output
    ctx.mark_non_differentiable(lse, o_lin, lin_h, lin_z, o_sparse)
    ctx.save_for_backward(q, k, v, proj_weight, proj_bias, *tables, o, lse, o_lin, lin_h, lin_z, o_sparse)
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
    o, lse, o_lin, lin_h, lin_z, o_sparse = rest[_NUM_MAP_TABLES:]
    # Only the CPU backward reads the inverse tables; the CUDA backward builds its own (include/sla/sla.h).
    if tables[4].numel() == 0 and q.device.type == "cpu":
        raise RuntimeError(
            "sla.forward: backward needs the inverse block-map tables (inv_offset, inv_index); compute the block "
            "map with with_inverse=True or use BlockMap.with_inverse()"
        )
    dq, dk, dv, d_weight, d_bias = torch.ops.sla.backward(
        grad_o, q, k, v, proj_weight, proj_bias, *tables, o, lse, o_lin, lin_h, lin_z, o_sparse, *ctx.options
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


def _double_backward(ctx, *grads):
    raise NotImplementedError(
        "sla: double backward is not implemented: the gradients of sparse_linear_attention (torch.ops.sla.backward) "
        "are not differentiable. A second grad through create_graph=True needs them; compute the SLA layers' "
        "gradients without create_graph, or keep them out of second-order terms"
    )


def _setup_backward_context(ctx, inputs, output):
    pass


torch.library.register_autograd("sla::backward", _double_backward, setup_context=_setup_backward_context)


def _has_tangent(t) -> bool:
    if not isinstance(t, torch.Tensor):
        return False
    # torch.autograd.forward_ad dual tensors, and torch.func.jvp's (which are dual tensors under a functorch wrapper).
    return fwAD.unpack_dual(t).tangent is not None or _functorch_jvp_active(t)


def _functorch_jvp_active(t) -> bool:
    try:
        from torch._C._functorch import TransformType, peek_interpreter_stack
    except ImportError:  # pragma: no cover - older torch
        return False
    interp = peek_interpreter_stack()
    return interp is not None and interp.key() == TransformType.Jvp


def check_no_forward_ad(function: str, **tensors) -> None:
    """Raises NotImplementedError when any input carries a forward-mode tangent. Skipped while torch.compile
    traces (dynamo does not model the functorch interpreter stack; compiled graphs take no tangents here)."""
    if torch.compiler.is_compiling():
        return
    for name, t in tensors.items():
        if _has_tangent(t):
            raise NotImplementedError(
                f"{function}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not implemented; "
                f"{name} carries a tangent. Use reverse mode (backward, torch.func.vjp / grad) instead"
            )
