"""SparseLinearAttention: a drop-in for the public thu-ml/SLA module (main branch) on the fused kernels.

Same constructor, same parameter names (``proj_l.weight``, ``proj_l.bias``: checkpoints fine-tuned with the public
code load unchanged), same forward signature and dtype handling. docs/PYTHON.md lists the differences.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from . import _options
from .blockmap import BlockMap
from .functional import sparse_linear_attention


class SparseLinearAttention(nn.Module):
    def __init__(
        self,
        head_dim: int,
        topk: float,
        feature_map: str = "softmax",
        BLKQ: int = 64,
        BLKK: int = 64,
        use_bf16: bool = True,
        tie_feature_map_qk: bool = True,
        *,
        variant: str = "global",
        negligible: float = 0.0,
        layout: str = "BHLD",
        scale: Optional[float] = None,
    ):
        """
        Args:
            head_dim: D, the head dimension (of q, k and v).
            topk: fraction of key blocks attended exactly, in (0, 1].
            feature_map: 'softmax', 'elu' or 'relu' ('hedgehog' raises NotImplementedError).
            BLKQ, BLKK: query and key block sizes (64 or 128).
            use_bf16: on CUDA, compute in bfloat16 (True) or float16 (False), as the public module does. CPU inputs
                keep their dtype.
            tie_feature_map_qk: accepted for compatibility; the supported feature maps have no parameters, so q and
                k always share them.
            variant: 'global' (public main branch) or 'complement' (paper / public SLA-1 branch).
            negligible: fraction of key blocks skipped entirely (complement variant only).
            layout: 'BHLD' (public module) or 'BLHD'.
            scale: softmax scale; None means 1/sqrt(D).
        """
        super().__init__()
        _options.check_feature_map(feature_map)
        _options.check_choice("variant", variant, _options.VARIANTS)
        _options.check_choice("layout", layout, _options.LAYOUTS)
        self.dtype = torch.bfloat16 if use_bf16 else torch.float16
        self.topk = topk
        self.BLKQ = BLKQ
        self.BLKK = BLKK
        self.feature_map = feature_map
        self.tie_feature_map_qk = tie_feature_map_qk
        self.variant = variant
        self.negligible = negligible
        self.layout = layout
        self.scale = scale
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        self.init_weights_()

    def init_weights_(self) -> None:
        # Zero projection: an untrained layer is exactly sparse attention (docs/SPEC.md section 4).
        with torch.no_grad():
            nn.init.zeros_(self.proj_l.weight)
            nn.init.zeros_(self.proj_l.bias)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        return_sparsity: bool = False,
        block_map: Optional[BlockMap] = None,
    ):
        """
        Args:
            q, k, v: (B, H, L, D) (or (B, L, H, D) with layout='BLHD').
            return_sparsity: also return the fraction of key blocks attended, T / Nk (the public module's value).
            block_map: reuse a map (e.g. from a previous diffusion step) instead of predicting one.
        Returns:
            O in the dtype of q, or (O, T / Nk).
        """
        dtype = q.dtype
        if q.is_cuda:
            q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
        o, bmap = sparse_linear_attention(
            q,
            k,
            v,
            topk=self.topk,
            block_q=self.BLKQ,
            block_k=self.BLKK,
            feature_map=self.feature_map,
            variant=self.variant,
            negligible=self.negligible,
            layout=self.layout,
            scale=self.scale,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            block_map=block_map,
            return_block_map=True,
        )
        o = o.to(dtype)
        if return_sparsity:
            return o, bmap.density
        return o

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, BLKQ={self.BLKQ}, BLKK={self.BLKK}, feature_map={self.feature_map!r}, "
            f"variant={self.variant!r}, layout={self.layout!r}, dtype={self.dtype}"
        )
