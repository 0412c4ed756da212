"""Fake (meta) kernels of the torch.ops.sla ops: output shapes, dtypes and strides without computing anything, for
torch.compile, torch.export and FakeTensor tracing. They mirror python/csrc/ops.cpp exactly (same table shapes,
same output layouts); torch.library.opcheck in tests/python checks that they agree."""

from __future__ import annotations

import torch

from ._options import check_same_device
from ._shapes import block_map_sizes
from .rules import table_widths

# Every fake checks its tensors' devices (check_same_device) as the real ops do: a meta tensor among real ones would
# otherwise route the call here and hand back uninitialised memory.


def _check_rank(name: str, t: torch.Tensor, rank: int, dims: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name}: expected {rank} dimensions {dims}, got {t.dim()}")


_TABLE_NAMES = (
    "lut",
    "count",
    "negl_lut",
    "negl_count",
    "inv_offset",
    "inv_index",
    "negl_inv_offset",
    "negl_inv_index",
)


def _with_attention_strides(t: torch.Tensor) -> torch.Tensor:
    """ops.cpp's with_attention_strides: a contiguous copy only when the last dim is not contiguous or a stride of a
    dimension longer than 1 is not positive."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    ok = t.stride(-1) == 1 or t.size(-1) == 1
    ok = ok and all(t.size(d) == 1 or t.stride(d) >= 1 for d in range(t.dim()))
    return t if ok else t.contiguous()


def _empty_attention_like(like: torch.Tensor, last: int, dtype: torch.dtype) -> torch.Tensor:
    """ops.cpp's empty_attention_like: (B, L, H, last) memory when `like` has its head stride below its sequence
    stride, (B, H, L, last) memory otherwise."""
    b, h, length = like.shape[0], like.shape[1], like.shape[2]
    if like.stride(1) < like.stride(2):
        return like.new_empty((b, length, h, last), dtype=dtype).transpose(1, 2)
    return like.new_empty((b, h, length, last), dtype=dtype)


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _table(like: torch.Tensor, *shape) -> torch.Tensor:
    return like.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("sla::block_map")
def _block_map_fake(
    q,
    k,
    block_q,
    block_k,
    topk,
    negligible,
    variant,
    with_inverse,
    head_topk=(),
    top_p=0.0,
    head_top_p=(),
    min_blocks=1,
    max_blocks=0,
    negligible_threshold=0.0,
    max_negligible=0.0,
    scale=0.0,
):
    _check_rank("q", q, 4, "(B, H, Lq, D)")
    _check_rank("k", k, 4, "(B, H, Lk, D)")
    check_same_device(("q", q), ("k", k))
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    nq, nk, _, _ = block_map_sizes(lq, lk, block_q, block_k, topk, negligible, variant)
    # The widths of the adaptive rules (docs/BLOCK_MAP.md); with the defaults they are the fixed rule's T and Tn.
    t, tn = table_widths(
        nk,
        variant,
        topk=topk,
        negligible=negligible,
        head_topk=head_topk,
        top_p=top_p,
        head_top_p=head_top_p,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        negligible_threshold=negligible_threshold,
        max_negligible=max_negligible,
    )
    has_negl = tn > 0
    return (
        _table(q, b, h, nq, t),
        _table(q, b, h, nq),
        _table(q, b, h, nq, tn),
        _table(q, b, h, nq if has_negl else 0),
        _table(q, b, h, nk + 1 if with_inverse else 0),
        _table(q, b, h, nq * t if with_inverse else 0),
        _table(q, b, h, 0),  # the negligible inverse tables are not built (python/csrc/ops.cpp)
        _table(q, b, h, 0),
    )


@torch.library.register_fake("sla::invert_block_map")
def _invert_block_map_fake(lut, count, negl_lut, negl_count, k_blocks):
    _check_rank("lut", lut, 4, "(B, H, Nq, T)")
    _check_rank("negl_lut", negl_lut, 4, "(B, H, Nq, Tn)")
    check_same_device(("lut", lut), ("count", count), ("negl_lut", negl_lut), ("negl_count", negl_count))
    if k_blocks < 1:
        raise ValueError(f"k_blocks: expected Nk >= 1, got {k_blocks}")
    b, h, nq, t = lut.shape
    return (
        _table(lut, b, h, k_blocks + 1),
        _table(lut, b, h, nq * t),
        _table(lut, b, h, 0),
        _table(lut, b, h, 0),
    )


@torch.library.register_fake("sla::check_block_map")
def _check_block_map_fake(
    lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index, k_blocks
):
    # The contents are data: nothing to check at trace time but the devices.
    check_same_device(
        *zip(_TABLE_NAMES, (lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index))
    )


@torch.library.register_fake("sla::forward")
def _forward_fake(
    q,
    k,
    v,
    proj_weight,
    proj_bias,
    lut,
    count,
    negl_lut,
    negl_count,
    inv_offset,
    inv_index,
    negl_inv_offset,
    negl_inv_index,
    block_q,
    block_k,
    variant,
    feature_map,
    scale,
    eps,
    save_for_backward,
):
    _check_rank("q", q, 4, "(B, H, Lq, D)")
    _check_rank("k", k, 4, "(B, H, Lk, D)")
    _check_rank("v", v, 4, "(B, H, Lk, Dv)")
    tables = (lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index)
    check_same_device(
        ("q", q), ("k", k), ("v", v), ("proj_weight", proj_weight), ("proj_bias", proj_bias), *zip(_TABLE_NAMES, tables)
    )
    b, h, lq, d = q.shape
    dv = v.shape[3]
    acc = _acc_dtype(q)
    o = _empty_attention_like(_with_attention_strides(q), dv, q.dtype)
    if save_for_backward:
        saved = (
            q.new_empty((b, h, lq), dtype=acc),
            # o_lin: only where the backward reads it (CPU), as the real op.
            q.new_empty((b, h, lq, dv) if q.device.type == "cpu" else (0,), dtype=acc),
            q.new_empty((b, h, d, dv), dtype=acc),
            q.new_empty((b, h, d), dtype=acc),
            q.new_empty((b, h, lq, dv), dtype=acc),
        )
    else:
        saved = tuple(q.new_empty((0,), dtype=acc) for _ in range(5))
    return (o, *saved)


@torch.library.register_fake("sla::backward")
def _backward_fake(
    grad_o,
    q,
    k,
    v,
    proj_weight,
    proj_bias,
    lut,
    count,
    negl_lut,
    negl_count,
    inv_offset,
    inv_index,
    negl_inv_offset,
    negl_inv_index,
    o,
    lse,
    o_lin,
    lin_h,
    lin_z,
    o_sparse,
    block_q,
    block_k,
    variant,
    feature_map,
    scale,
    eps,
):
    _check_rank("grad_o", grad_o, 4, "(B, H, Lq, Dv)")
    _check_rank("q", q, 4, "(B, H, Lq, D)")
    _check_rank("k", k, 4, "(B, H, Lk, D)")
    _check_rank("v", v, 4, "(B, H, Lk, Dv)")
    tables = (lut, count, negl_lut, negl_count, inv_offset, inv_index, negl_inv_offset, negl_inv_index)
    check_same_device(
        ("grad_o", grad_o),
        ("q", q),
        ("k", k),
        ("v", v),
        ("proj_weight", proj_weight),
        ("proj_bias", proj_bias),
        *zip(_TABLE_NAMES, tables),
        ("o", o),
        ("lse", lse),
        ("o_lin", o_lin),
        ("lin_h", lin_h),
        ("lin_z", lin_z),
    )
    dv_size = v.shape[3]
    acc = _acc_dtype(q)
    dq = _empty_attention_like(_with_attention_strides(q), q.shape[3], q.dtype)
    dk = _empty_attention_like(_with_attention_strides(k), k.shape[3], k.dtype)
    dv = _empty_attention_like(_with_attention_strides(v), dv_size, v.dtype)
    d_weight = q.new_empty((dv_size, dv_size) if proj_weight is not None else (0,), dtype=acc)
    d_bias = q.new_empty((dv_size,) if proj_bias is not None else (0,), dtype=acc)
    return dq, dk, dv, d_weight, d_bias
