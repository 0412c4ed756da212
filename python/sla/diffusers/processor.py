"""The SLA attention processor for the self-attention (``attn1``) of diffusers' Wan transformers.

It does what diffusers' ``WanAttnProcessor`` does for self-attention (QKV projections, RMS qk-norm across heads,
RoPE on interleaved pairs, the output projection) and replaces the dense attention call by sparse-linear
attention on diffusers' (B, L, H, D) tensors as they are (``layout='BLHD'``, no copies). It is an ``nn.Module``:
set on a ``WanAttention`` it becomes its ``processor`` submodule, so its projection ``proj_l`` is a parameter of
the transformer (``blocks.{i}.attn1.processor.proj_l.weight`` / ``.bias``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .. import _options
from .._layer import RuleLayer
from ..blockmap import BlockMap
from ..functional import sparse_linear_attention
from ..rules import RULE_OPTIONS, BlockRule, PerHead, rule_of, updated_rule

try:  # diffusers' own QKV helper (handles fused to_qkv projections); private, so keep a fallback
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections as _diffusers_qkv
except ImportError:  # pragma: no cover - other diffusers versions
    _diffusers_qkv = None

_CUDA_DTYPES = (torch.bfloat16, torch.float16)
DEFAULT_TOPK = 0.1  # TurboDiffusion's


def _qkv_projections(attn, hidden_states: torch.Tensor):
    if _diffusers_qkv is not None:
        return _diffusers_qkv(attn, hidden_states, None)
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Wan's RoPE exactly as WanAttnProcessor computes it (there it is a local function, not importable): rotation of
    # interleaved pairs, (1, L, 1, D) tables repeated per pair, arithmetic in the tables' dtype, result in x's dtype.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class Float32Linear(nn.Linear):
    """An ``nn.Linear`` whose parameters never go below float32: ``model.to(torch.bfloat16)``, ``.half()``,
    ``.bfloat16()`` and fp8 casts move it (device changes apply) but leave it in float32; a cast to float64 applies.
    The SLA projection is trained and kept in float32 (as the public recipe does: it is excluded from low-precision
    casts and quantisation), and the kernels compute it in float32 whatever its storage dtype."""

    def _apply(self, fn, recurse=True):
        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if (
                isinstance(out, torch.Tensor)
                and out.is_floating_point()
                and out.element_size() < 4
                and t.is_floating_point()
                and t.element_size() >= 4
            ):  # bf16, fp16, fp8 (layerwise casting)
                out = t.to(device=out.device, dtype=torch.float32)
            return out

        return super()._apply(keep_fp32, recurse)


class SLAWanAttnProcessor(nn.Module, RuleLayer):
    """Sparse-linear self-attention for a diffusers ``WanAttention`` (``attn1``).

    Options (``OPTIONS``; set by the constructor, ``configure``, ``set_rule`` or as attributes, all checked when
    given: a refused value leaves the processor as it was):
        topk, top_p, min_blocks, max_blocks, negligible, negligible_threshold, max_negligible: the block-selection
            rule (docs/BLOCK_MAP.md); topk and top_p may be one value per head. ``rule`` is the same as one
            ``sla.BlockRule`` (what sla.calibrate produces; ``set_rule`` / ``sla.apply_rules`` set it).
        block_q, block_k, variant, feature_map, scale, eps: the SLA options (sla.sparse_linear_attention).
        reuse_block_map_steps: N > 1 predicts a map on one call and reuses it for the next N - 1 calls of this
            layer (without gradients only; a call with gradients always predicts its own). A call counts once:
            with classifier-free guidance the pipeline makes two calls per denoising step.
        record_block_map: keep the latest map in ``last_block_map``.
        cuda_dtype: the dtype float32 CUDA inputs are computed in (the kernels take bf16/fp16 on CUDA).
    Other attributes:
        heads: the layer's head count (set by enable_sla), against which per-head rules are checked.
        block_map: an ``sla.BlockMap`` used instead of predicting one (None: predict every call).
        last_block_map: the map of the latest call, when ``record_block_map`` is True (or reuse is on).
        recorder: installed by ``sla.record``: called with the (B, H, L, D) q, k, v of every call.

    Context parallelism: diffusers' ``enable_parallelism`` sets ``_parallel_config`` on every processor that has
    the attribute; ``attend`` is the one method that runs the attention, and with a context-parallel configuration
    it hands over to ``context_parallel_attention``, which runs SLA through the Ulysses all-to-all of
    ``sla.distributed`` (docs/PYTHON.md, "Sequence parallel"). ``reduce_proj_grad`` (default False) sums proj_l's
    gradients over the ulysses group.
    """

    # Read and written by diffusers: set_attention_backend (ignored by the SLA call; disable_sla hands it back to
    # the dense processor) and enable_parallelism.
    _attention_backend = None
    _parallel_config = None
    # Under context parallelism: sum proj_l's gradients over the ulysses group in the backward pass. Off by default:
    # each rank's are partial sums over its heads, completed (like every other weight's partial sums over the
    # rank's tokens) by a data-parallel reduction that spans the context-parallel ranks.
    reduce_proj_grad = False

    def __init__(
        self,
        head_dim: int,
        *,
        topk: Optional[PerHead] = None,
        block_q: int = 128,
        block_k: int = 64,
        variant: str = "global",
        feature_map: str = "softmax",
        negligible: float = 0.0,
        scale: Optional[float] = None,
        eps: float = 1e-5,
        reuse_block_map_steps: int = 0,
        record_block_map: bool = False,
        cuda_dtype: torch.dtype = torch.bfloat16,
        device: Optional[torch.device] = None,
        top_p: Optional[PerHead] = None,
        min_blocks: int = 1,
        max_blocks: Optional[int] = None,
        negligible_threshold: float = 0.0,
        max_negligible: Optional[float] = None,
        rule: Optional[BlockRule] = None,
        heads: Optional[int] = None,
    ):
        """head_dim: D of the layer (its projection is D x D); heads: H, when known (per-head rules must have H
        values); topk defaults to 0.1 unless top_p or rule is given. The other arguments: see the class doc."""
        super().__init__()
        _options.check_positive_int("head_dim", head_dim)
        if heads is not None:
            _options.check_positive_int("heads", heads)
        self.heads = heads
        self.rule: Optional[BlockRule] = None
        self.block_map: Optional[BlockMap] = None
        self.last_block_map: Optional[BlockMap] = None
        self._reuse_left = 0
        rule = rule_of(
            rule,
            topk=DEFAULT_TOPK if topk is None and top_p is None and rule is None else topk,
            top_p=top_p,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            negligible=negligible,
            negligible_threshold=negligible_threshold,
            max_negligible=max_negligible,
        )
        # Checked before the projection is allocated: a refused option costs nothing.
        checked = self.checked_options(
            rule=rule,
            block_q=block_q,
            block_k=block_k,
            variant=variant,
            feature_map=feature_map,
            scale=scale,
            eps=eps,
            reuse_block_map_steps=reuse_block_map_steps,
            record_block_map=record_block_map,
            cuda_dtype=cuda_dtype,
        )
        self.proj_l = Float32Linear(head_dim, head_dim, device=device, dtype=torch.float32)
        with torch.no_grad():  # zero projection: an untrained layer is sparse attention alone (docs/SPEC.md section 4)
            nn.init.zeros_(self.proj_l.weight)
            nn.init.zeros_(self.proj_l.bias)
        self.apply_options(checked)

    # Options that are plain attributes (the rule options are views of ``rule``).
    _PLAIN = (
        "block_q",
        "block_k",
        "variant",
        "feature_map",
        "scale",
        "eps",
        "reuse_block_map_steps",
        "record_block_map",
        "cuda_dtype",
    )
    OPTIONS = RULE_OPTIONS + ("rule",) + _PLAIN

    def checked_options(self, **options) -> dict:
        """Checks SLA options (names in ``OPTIONS``) against this processor, changing nothing: returns the complete
        settings (``rule`` and the plain options) that ``apply_options`` installs. Raises naming the option."""
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise TypeError(f"unknown SLA option(s) {unknown}; expected some of {list(self.OPTIONS)}")
        new = {name: options.get(name, getattr(self, name, None)) for name in self._PLAIN}
        _options.check_choice("variant", new["variant"], _options.VARIANTS)
        _options.check_feature_map(new["feature_map"])
        _options.check_block_size("block_q", new["block_q"])
        _options.check_block_size("block_k", new["block_k"])
        _options.check_scale(new["scale"])
        eps = _options.check_number("eps", new["eps"], "> 0")
        if not (0.0 < eps < float("inf")):
            raise ValueError(f"eps: expected a finite value > 0, got {eps}")
        n = new["reuse_block_map_steps"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"reuse_block_map_steps: expected an int >= 0, got {n!r}")
        if not isinstance(new["record_block_map"], bool):
            raise TypeError(f"record_block_map: expected a bool, got {new['record_block_map']!r}")
        if new["cuda_dtype"] not in _CUDA_DTYPES:
            raise ValueError(f"cuda_dtype: expected torch.bfloat16 or torch.float16, got {new['cuda_dtype']!r}")
        rule = updated_rule(self.rule, options)
        new["rule"] = self.rule if rule is None else rule
        new["rule"].check_layer(new["variant"], self.heads)
        return new

    def apply_options(self, checked: dict) -> None:
        """Installs what ``checked_options`` returned (it cannot fail)."""
        for name, value in checked.items():
            setattr(self, name, value)
        self._reuse_left = 0

    def configure(self, **options) -> "SLAWanAttnProcessor":
        """Sets SLA options (names in ``OPTIONS``), all checked first: when it raises, nothing changed. Returns self."""
        self.apply_options(self.checked_options(**options))
        return self

    def check_rule(self, rule: BlockRule, name: str = "rule") -> None:
        if not isinstance(rule, BlockRule):
            raise TypeError(f"{name}: expected an sla.BlockRule, got {type(rule).__name__}")
        rule.check_layer(self.variant, self.heads, name)

    def set_rule(self, rule: BlockRule) -> None:
        """Replaces the block-selection rule (e.g. per-head budgets from sla.calibrate); checked first."""
        self.check_rule(rule)
        self.configure(rule=rule)

    def options(self) -> dict:
        return {name: getattr(self, name) for name in self.OPTIONS}

    def forward(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or getattr(attn, "add_k_proj", None) is not None:
            raise ValueError("SLAWanAttnProcessor: self-attention only (attn1); cross-attention stays dense")
        if attention_mask is not None:
            raise ValueError("SLAWanAttnProcessor: attention_mask is not supported (Wan's self-attention has none)")
        query, key, value = _qkv_projections(attn, hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # (B, L, H, D)
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)
        out = self.attend(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The attention of this layer: (B, L, H, D) q, k, v (after RoPE) to (B, L, H, D), in q's dtype. The one
        place the processor runs attention: on the full sequence (``local_attention``) or, when diffusers'
        ``enable_parallelism`` has set a context-parallel configuration, through ``context_parallel_attention``."""
        parallel = self._parallel_config
        if getattr(parallel, "context_parallel_config", None) is not None:
            return self.context_parallel_attention(query, key, value, parallel)
        return self.local_attention(query, key, value)

    def context_parallel_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, parallel_config
    ) -> torch.Tensor:
        """Attention when each rank holds its shard of the sequence (diffusers' ``_cp_plan`` splits the hidden
        states and the RoPE tables on dim 1): Ulysses SLA over diffusers' ulysses mesh (``sla.distributed``:
        all-to-all to H / P heads of the full sequence, the same SLA as one process, all-to-all back), so the block
        map and the linear branch see every token. (B, L_rank, H, D) in and out. Ring attention is refused: it
        merges partial outputs by their log-sum-exp, which the sum of SLA's sparse and linear branches lacks."""
        from ..distributed import head_counts, ulysses_sparse_linear_attention

        if self.recorder is not None:
            raise NotImplementedError(
                "sla.record: recording under context parallelism is not supported (each rank holds a shard of the "
                "sequence); record on one process, without enable_parallelism"
            )
        cp = parallel_config.context_parallel_config
        if cp.ring_degree > 1:
            raise NotImplementedError(
                f"SLAWanAttnProcessor: ring attention (ring_degree = {cp.ring_degree}) cannot run SLA (its partial "
                "outputs are merged by log-sum-exp, which SLA's linear branch does not have); use "
                "ContextParallelConfig(ulysses_degree=...) with ring_degree = 1"
            )
        group = cp._ulysses_mesh.get_group()
        world = dist.get_world_size(group)
        # diffusers shards with chunk() into equal parts unless ulysses_anything is set (then tensor_split, whose
        # shard lengths are gathered by the SLA call).
        seq_lens = None if cp.ulysses_anything else [query.shape[1]] * world
        dtype = query.dtype
        query, key, value = self._kernel_inputs(query, key, value)
        b, l_local, h, _ = query.shape
        if seq_lens is not None:
            h_mine = head_counts(h, world)[dist.get_rank(group)]
            bmap = self._map_for_call(b, h_mine, l_local * world, key.shape[1] * world)
        else:
            bmap = self.block_map  # maps recorded with ragged shards are not reused (their length is not known here)
        out, used = ulysses_sparse_linear_attention(
            query,
            key,
            value,
            group=group,
            seq_lens=seq_lens,
            reduce_proj_grad=self.reduce_proj_grad,
            **self._sla_options(bmap),
        )
        self._remember(used)
        return out.to(dtype)

    def local_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """SLA over the full sequence held by this process: (B, L, H, D) in and out."""
        dtype = query.dtype
        query, key, value = self._kernel_inputs(query, key, value)
        b, lq, h, _ = query.shape
        if self.recorder is not None:  # sla.record: the (B, H, L, D) inputs of SLA, as SparseLinearAttention records
            self.recorder(self, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        bmap = self._map_for_call(b, h, lq, key.shape[1])
        out, used = sparse_linear_attention(query, key, value, **self._sla_options(bmap))
        self._remember(used)
        return out.to(dtype)

    def _kernel_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """q, k, v in a dtype the CUDA kernels run (``cuda_dtype`` unless bf16 / fp16 already); CPU ones as given."""
        if query.is_cuda and query.dtype not in _CUDA_DTYPES:
            return tuple(t.to(self.cuda_dtype) for t in (query, key, value))
        return query, key, value

    def _sla_options(self, block_map: Optional[BlockMap]) -> dict:
        """The keyword arguments of this layer's SLA call that the local and the context-parallel path share."""
        return dict(
            rule=self.rule,
            block_q=self.block_q,
            block_k=self.block_k,
            feature_map=self.feature_map,
            variant=self.variant,
            layout="BLHD",
            scale=self.scale,
            eps=self.eps,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            block_map=block_map,
            return_block_map=True,
        )

    # Block-map reuse is plain Python state: eager mode. Under torch.compile keep reuse off (the default) or pass
    # maps through `block_map`; changing the state between calls would recompile.
    # The shape is that of the call's SLA: (B, H, Lq, Lk) of this rank's heads over the full sequence.
    def _map_for_call(self, b: int, h: int, lq: int, lk: int) -> Optional[BlockMap]:
        if self.block_map is not None:
            return self.block_map
        if self.reuse_block_map_steps > 1 and self._reuse_left > 0 and not torch.is_grad_enabled():
            last = self.last_block_map
            if (
                last is not None
                and tuple(last.lut.shape[:2]) == (b, h)
                and last.block_q == self.block_q
                and last.block_k == self.block_k
                and last.q_blocks == -(-lq // self.block_q)
                and last.k_blocks == -(-lk // self.block_k)
            ):
                self._reuse_left -= 1
                return last
            self._reuse_left = 0  # another shape (batch, resolution, options): predict afresh
        return None

    def _remember(self, used: BlockMap) -> None:
        reuse = self.reuse_block_map_steps > 1 and not torch.is_grad_enabled()
        if self.record_block_map or reuse:
            if reuse and used is not self.last_block_map:
                self._reuse_left = self.reuse_block_map_steps - 1
            self.last_block_map = used

    def reset_block_map(self) -> None:
        """Forgets the recorded map: the next call predicts one (e.g. at the start of a new video)."""
        self.last_block_map = None
        self._reuse_left = 0

    def extra_repr(self) -> str:
        rule = f"topk={self.topk}" if self.rule.is_fixed else f"rule={self.rule.to_dict()}"
        return (
            f"{rule}, block_q={self.block_q}, block_k={self.block_k}, variant={self.variant!r}, "
            f"feature_map={self.feature_map!r}, reuse_block_map_steps={self.reuse_block_map_steps}"
        )


def _rule_option(name: str) -> property:
    """A rule option as an attribute: read from ``rule``; setting it goes through ``configure`` (checked)."""

    def get(self):
        return getattr(self.rule, name) if self.rule is not None else None

    def set(self, value):
        self.configure(**{name: value})

    return property(get, set, doc=f"The rule's {name} (setting it calls configure({name}=...)).")


for _name in RULE_OPTIONS:
    setattr(SLAWanAttnProcessor, _name, _rule_option(_name))
del _name

__all__ = ["Float32Linear", "SLAWanAttnProcessor"]
