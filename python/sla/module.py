"""SparseLinearAttention: a drop-in for the public thu-ml/SLA module (main branch) on the fused kernels.

Same constructor, same parameter names (``proj_l.weight``, ``proj_l.bias``: checkpoints fine-tuned with the public
code load unchanged), same forward signature and dtype handling. docs/PYTHON.md lists the differences.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from . import _options, tiling
from ._layer import RuleLayer
from .blockmap import BlockMap
from .functional import sparse_linear_attention
from .rules import BlockRule, PerHead, rule_of


class SparseLinearAttention(nn.Module, RuleLayer):
    def __init__(
        self,
        head_dim: int,
        topk: Optional[PerHead] = None,
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
        top_p: Optional[PerHead] = None,
        min_blocks: int = 1,
        max_blocks: Optional[int] = None,
        negligible_threshold: float = 0.0,
        max_negligible: Optional[float] = None,
        rule: Optional[BlockRule] = None,
        video_shape: Optional[Sequence[int]] = None,
        tile: Sequence[int] = (4, 4, 4),
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
            top_p, min_blocks, max_blocks, negligible_threshold, max_negligible, rule: the adaptive block-map rules
                (docs/BLOCK_MAP.md); topk may also be one value per head. ``set_rule`` / sla.calibration change
                them later.
            video_shape, tile: when video_shape = (t, h, w) is given, the L tokens (raster order) are reordered into
                tile-shaped groups before SLA and back after (sla.tiling), so that each block is a compact cube.
        """
        super().__init__()
        # Every argument is checked here, not at the first forward (which may come after expensive work).
        _options.check_positive_int("head_dim", head_dim)
        _options.check_feature_map(feature_map)
        _options.check_choice("variant", variant, _options.VARIANTS)
        _options.check_choice("layout", layout, _options.LAYOUTS)
        _options.check_block_size("BLKQ", BLKQ)
        _options.check_block_size("BLKK", BLKK)
        _options.check_bool("use_bf16", use_bf16)
        _options.check_bool("tie_feature_map_qk", tie_feature_map_qk)
        _options.check_scale(scale)
        self.dtype = torch.bfloat16 if use_bf16 else torch.float16
        rule = rule_of(
            rule,
            topk=topk,
            top_p=top_p,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            negligible=negligible,
            negligible_threshold=negligible_threshold,
            max_negligible=max_negligible,
        )
        rule.check_layer(variant)
        self.rule = rule
        self.topk = rule.topk
        self.video_shape = None if video_shape is None else tuple(video_shape)
        self.tile = tuple(tile)
        if self.video_shape is not None:
            tiling.tile_permutation(self.video_shape, self.tile)  # checks both now, not at the first call
        # Called as recorder(module, q, k, v) with the (B, H, L, D) inputs SLA sees (after tiling); see
        # sla.calibration.record.
        self.recorder: Optional[Callable] = None
        self.BLKQ = BLKQ
        self.BLKK = BLKK
        self.feature_map = feature_map
        self.tie_feature_map_qk = tie_feature_map_qk
        self.variant = variant
        self.negligible = rule.negligible
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
        seq_dim = 2 if self.layout == "BHLD" else 1
        if self.video_shape is not None:
            q, k, v = (tiling.to_tiles(t, self.video_shape, self.tile, dim=seq_dim) for t in (q, k, v))
        if self.recorder is not None:
            self.recorder(self, *(_options.to_bhld(t, self.layout) for t in (q, k, v)))
        o, bmap = sparse_linear_attention(
            q,
            k,
            v,
            block_q=self.BLKQ,
            block_k=self.BLKK,
            feature_map=self.feature_map,
            variant=self.variant,
            layout=self.layout,
            scale=self.scale,
            rule=self.rule,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            block_map=block_map,
            return_block_map=True,
        )
        if self.video_shape is not None:
            o = tiling.from_tiles(o, self.video_shape, self.tile, dim=seq_dim)
        o = o.to(dtype)
        if return_sparsity:
            return o, (bmap.density if self.rule.is_fixed else bmap.mean_density)
        return o

    def check_rule(self, rule: BlockRule, name: str = "rule") -> None:
        """Raises (naming `name`) unless `rule` fits this layer's variant; changes nothing."""
        if not isinstance(rule, BlockRule):
            raise TypeError(f"{name}: expected an sla.BlockRule, got {type(rule).__name__}")
        rule.check_layer(self.variant, name=name)

    def set_rule(self, rule: BlockRule) -> None:
        """Replaces the block-selection rule (e.g. per-head budgets from sla.calibrate); checked first."""
        self.check_rule(rule)
        self.rule = rule
        self.topk = rule.topk
        self.negligible = rule.negligible

    def extra_repr(self) -> str:
        rule = f"topk={self.rule.topk}" if self.rule.is_fixed else f"rule={self.rule.to_dict()}"
        tiles = f", video_shape={self.video_shape}, tile={self.tile}" if self.video_shape is not None else ""
        return (
            f"{rule}{tiles}, BLKQ={self.BLKQ}, BLKK={self.BLKK}, feature_map={self.feature_map!r}, "
            f"variant={self.variant!r}, layout={self.layout!r}, dtype={self.dtype}"
        )
