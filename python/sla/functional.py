"""The functional form of one SLA layer: block map (unless given), sparse branch, linear branch and projection,
O = O_s + O_l W^T + b (docs/SPEC.md sections 1-4), differentiable in q, k, v, proj_weight and proj_bias."""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _options
from ._autograd import check_no_forward_ad
from .blockmap import BlockMap
from .blockmap import block_map as predict_block_map
from .rules import BlockRule, PerHead


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: Optional[PerHead] = None,
    block_q: int = 64,
    block_k: int = 64,
    feature_map: str = "softmax",
    variant: str = "global",
    negligible: float = 0.0,
    layout: str = "BHLD",
    scale: Optional[float] = None,
    eps: float = 1e-5,
    proj_weight: Optional[torch.Tensor] = None,
    proj_bias: Optional[torch.Tensor] = None,
    block_map: Optional[BlockMap] = None,
    return_block_map: bool = False,
    top_p: Optional[PerHead] = None,
    min_blocks: int = 1,
    max_blocks: Optional[int] = None,
    negligible_threshold: float = 0.0,
    max_negligible: Optional[float] = None,
    rule: Optional[BlockRule] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, BlockMap]]:
    """Sparse-linear attention (arXiv 2509.24006).

    Args:
        q, k, v: (B, H, L, D) tensors for ``layout='BHLD'``, (B, L, H, D) for ``'BLHD'``; any strides with a
            contiguous last dim are read without copies. bf16/fp16 on CUDA; fp32/fp64 (and bf16/fp16) on the CPU.
        topk: fraction of key blocks each query block attends to exactly, in (0, 1]; a float or one value per
            head (sequence or 1-D tensor).
        top_p, min_blocks, max_blocks, negligible_threshold, max_negligible, rule: the adaptive rules of
            sla.block_map (docs/BLOCK_MAP.md); exactly one of topk and top_p (or a rule) unless block_map is given.
        block_q, block_k: block sizes, 64 or 128.
        feature_map: phi of the linear branch: 'softmax' (over the head dim), 'elu' (elu + 1) or 'relu'.
        variant: 'global' (public main branch; linear branch over all keys) or 'complement' (the paper and the
            public SLA-1 branch; linear branch over the marginal blocks of each query block).
        negligible: fraction of key blocks skipped entirely (complement variant only).
        scale: softmax scale; None means 1/sqrt(D).
        eps: the global variant's denominator epsilon.
        proj_weight, proj_bias: the (Dv, Dv) and (Dv,) projection of the linear branch; None means zero. Computed
            in float32 (float64 for float64 inputs) whatever their dtype.
        block_map: a map to use instead of predicting one (its block sizes replace block_q and block_k; the
            forward and backward ops read T and Tn from its tables, so topk, negligible and the rules are unused).
            On the CPU, when gradients are needed, its inverse tables are built if it has none
            (``BlockMap.with_inverse()``); the CUDA backward builds its own, so CUDA maps are used as given.
        return_block_map: also return the BlockMap used (with inverse tables only when a CPU backward needs
            them).

    Returns:
        O in the layout and dtype of q, or (O, BlockMap).
    """
    _options.check_choice("layout", layout, _options.LAYOUTS)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _options.check_attention_tensor(name, t)
        _options.check_rank4(name, t, layout)
    _options.check_projection("proj_weight", proj_weight)
    _options.check_projection("proj_bias", proj_bias)
    _options.check_same_device(("q", q), ("k", k), ("v", v), ("proj_weight", proj_weight), ("proj_bias", proj_bias))
    if block_map is None:
        # topk and top_p: BlockRule.make names them; the plain numbers here would otherwise meet a bare float().
        _options.check_rule_numbers(negligible, negligible_threshold, max_negligible)
        _options.check_block_size("block_q", block_q)
        _options.check_block_size("block_k", block_k)
    eps = _options.check_number("eps", eps, "> 0")
    check_no_forward_ad("sla.sparse_linear_attention", q=q, k=k, v=v, proj_weight=proj_weight, proj_bias=proj_bias)
    _options.check_choice("variant", variant, _options.VARIANTS)
    _options.check_feature_map(feature_map)
    _options.check_scale(scale)
    if block_map is not None and not isinstance(block_map, BlockMap):
        raise TypeError(f"block_map: expected an sla.BlockMap, got {type(block_map).__name__}")
    if block_map is not None:
        _options.check_same_device(("q", q), ("block_map.lut", block_map.lut))

    qh, kh, vh = (_options.to_bhld(t, layout) for t in (q, k, v))
    needs_grad = _needs_grad(q, k, v, proj_weight, proj_bias)
    # The inverse tables only where the backward reads them: the CPU backward does; the CUDA backward builds its
    # own from the checked LUT and ignores the caller's (include/sla/sla.h, BackwardArgs), so building them there
    # would cost an inversion kernel and their memory for nothing.
    needs_inverse = needs_grad and qh.device.type == "cpu"

    if block_map is None:
        if rule is None:
            rule = BlockRule.make(
                topk=topk,
                top_p=top_p,
                min_blocks=min_blocks,
                max_blocks=max_blocks,
                negligible=negligible,
                negligible_threshold=negligible_threshold,
                max_negligible=max_negligible,
            )
        bmap = predict_block_map(
            qh,
            kh,
            block_q=block_q,
            block_k=block_k,
            variant=variant,
            rule=rule,
            with_inverse=needs_inverse,
            scale=scale,
        )
    else:
        bmap = block_map.with_inverse() if needs_inverse else block_map

    acc = _acc_dtype(q.dtype)
    weight = proj_weight.to(acc) if proj_weight is not None else None
    bias = proj_bias.to(acc) if proj_bias is not None else None
    o = torch.ops.sla.forward(
        qh,
        kh,
        vh,
        weight,
        bias,
        *bmap.tables(),
        bmap.block_q,
        bmap.block_k,
        variant,
        feature_map,
        0.0 if scale is None else float(scale),
        float(eps),
        needs_grad,
    )[0]
    o = _options.from_bhld(o, layout)
    return (o, bmap) if return_block_map else o


__all__ = ["sparse_linear_attention"]
