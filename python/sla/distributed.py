"""Ulysses sequence parallelism for SLA over a torch.distributed process group.

Each rank of the group holds a shard of the sequence for all heads. An all-to-all turns that into the full sequence
for a subset of the heads, SLA runs on it (block map, sparse and linear branches, projection: the same kernels on
the same full-length inputs as a single process), and the reverse all-to-all gives every rank its shard back:

    rank r: q, k, v (B, L_r, H, D)  --all-to-all-->  (B, L, H_r, D)  --SLA-->  (B, L, H_r, D)  --all-to-all-->  O_r

Nothing is padded: shards of different lengths (L not divisible by the group size) travel with per-rank split sizes
(`all_to_all_single`), so the block map and the linear branch see exactly the tokens a single process would.
Heads need not divide the group size either (ranks then hold H // P or H // P + 1 heads).

Gradients: q, k, v get their exact gradients (the backward of each all-to-all is the reverse all-to-all). The
projection proj_l is shared by all heads, so each rank's dW, db are partial sums over its own heads; the full
gradient is their sum over the group. That is the same as for every other weight of a sequence-sharded model (whose
per-rank gradients are partial sums over the rank's tokens), so a data-parallel reduction that spans the
sequence-parallel ranks completes them all; `reduce_proj_grad=True` sums them inside the group instead
(docs/PYTHON.md, "Sequence parallel").

The collectives are c10d's `all_to_all_single` and `all_reduce` inside autograd Functions: in eager mode they need
nothing beyond the process group (torch.distributed._functional_collectives would import torch._dynamo on first
use), and torch.compile traces them, through its functional-collective rewrite, without graph breaks.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from . import _options
from .blockmap import BlockMap
from .functional import sparse_linear_attention
from .module import SparseLinearAttention
from .rules import RULE_OPTIONS, BlockRule, PerHead, rule_of

# ---------------------------------------------------------------------------------------------------------------
# How the sequence and the heads are split


def shard_lengths(length: int, world_size: int) -> list[int]:
    """The shard lengths of `torch.tensor_split(x, world_size, dim)` for a sequence of `length` tokens: the first
    ``length % world_size`` ranks hold one token more."""
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    base, extra = divmod(int(length), world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def head_counts(heads: int, world_size: int) -> list[int]:
    """Heads per rank after the all-to-all: H // P each, the first H % P ranks one more."""
    if heads < world_size:
        raise ValueError(
            f"heads: sequence parallelism over {world_size} ranks needs at least {world_size} heads (each rank runs "
            f"SLA for a subset of the heads), got H = {heads}"
        )
    return shard_lengths(heads, world_size)


def balanced_head_order(costs: Sequence[float], world_size: int) -> list[int]:
    """A head order that balances per-rank work when heads cost different amounts (e.g. per-head budgets measured at
    the previous step): heads sorted by cost, most expensive first, dealt out in snake order (0, 1, .., P-1,
    P-1, .., 0, ..). Returns the permutation to pass as `head_order`: rank p runs the p-th contiguous group of it,
    of the sizes `head_counts` gives."""
    heads = len(costs)
    counts = head_counts(heads, world_size)
    by_cost = sorted(range(heads), key=lambda h: (-float(costs[h]), h))
    groups: list[list[int]] = [[] for _ in range(world_size)]
    forward = True
    i = 0
    while i < heads:
        ranks = range(world_size) if forward else range(world_size - 1, -1, -1)
        for p in ranks:
            if i < heads and len(groups[p]) < counts[p]:
                groups[p].append(by_cost[i])
                i += 1
        forward = not forward
    return [h for g in groups for h in sorted(g)]


def gather_shard_lengths(
    local_length: int, group: Optional[dist.ProcessGroup] = None, *, device: Optional[torch.device] = None
) -> list[int]:
    """Every rank's shard length (one small all-gather). `ulysses_sparse_linear_attention` calls it when no
    `seq_lens` are given; pass them to avoid the collective (and the graph break under torch.compile)."""
    return [int(x) for x in _gather_ints([local_length], group, device)[:, 0]]


def _gather_ints(values: Sequence[int], group, device) -> torch.Tensor:
    world = dist.get_world_size(group)
    mine = torch.tensor(list(values), dtype=torch.int64, device=device)
    out = torch.empty(world * len(values), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(out, mine, group=group)
    return out.view(world, len(values)).cpu()


def _collective_device(t: torch.Tensor, group) -> torch.device:
    # NCCL moves CUDA tensors only, gloo CPU tensors; a group with both ("cpu:gloo,cuda:nccl") takes either.
    return t.device if t.is_cuda and "nccl" in str(dist.get_backend(group)) else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# The two all-to-alls. Shapes in the logical (B, L, H, D) order; `seq_lens` are the ranks' shard lengths, `heads`
# the ranks' head counts, `order` the head permutation (None: identity). Rank p's heads are order[off_p:off_p+H_p].


def _head_slices(heads: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in heads:
        out.append((start, start + n))
        start += n
    return out


def _select_heads(x: torch.Tensor, order: Optional[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """x[:, :, heads of positions start..stop of the order] for x in (B, L, H, D)."""
    if order is None:
        return x[:, :, start:stop]
    return x.index_select(2, order[start:stop])


def _seq_to_heads(
    x: torch.Tensor, group, rank: int, seq_lens: Sequence[int], heads: Sequence[int], order: Optional[torch.Tensor]
) -> torch.Tensor:
    """(B, L_rank, H, D) sequence shard -> (B, L, H_rank, D) head shard (a view of an (L, B, H_rank, D) buffer)."""
    b, l_local, _, d = x.shape
    slices = _head_slices(heads)
    # Send buffer: for each destination p, this rank's tokens of p's heads as one contiguous (L_rank, B, H_p, D)
    # block; one copy.
    send_sizes = [l_local * b * n * d for n in heads]
    if order is None and len(set(heads)) == 1:  # equal head groups: the P blocks in one copy, (P, L_rank, B, H/P, D)
        p = len(heads)
        send = x.reshape(b, l_local, p, heads[0], d).permute(2, 1, 0, 3, 4).contiguous().view(-1)
    else:
        send = x.new_empty(sum(send_sizes))
        offset = 0
        for (start, stop), size in zip(slices, send_sizes):
            block = send[offset : offset + size].view(l_local, b, stop - start, d)
            block.copy_(_select_heads(x, order, start, stop).permute(1, 0, 2, 3))
            offset += size
    h_mine = heads[rank]
    recv_sizes = [n * b * h_mine * d for n in seq_lens]
    recv = x.new_empty(sum(recv_sizes))
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=group)
    # The blocks arrive in rank order, i.e. in sequence order: (L, B, H_rank, D).
    return recv.view(sum(seq_lens), b, h_mine, d).permute(1, 0, 2, 3)


def _heads_to_seq(
    y: torch.Tensor, group, rank: int, seq_lens: Sequence[int], heads: Sequence[int], order: Optional[torch.Tensor]
) -> torch.Tensor:
    """(B, L, H_rank, D) head shard -> (B, L_rank, H, D) sequence shard (contiguous for more than one rank)."""
    b, _, h_mine, d = y.shape
    # (L, B, H_rank, D): each destination's tokens are one contiguous block; one copy (none if y is such a view).
    send = y.permute(1, 0, 2, 3).contiguous().view(-1)
    send_sizes = [n * b * h_mine * d for n in seq_lens]
    l_local = seq_lens[rank]
    recv_sizes = [l_local * b * n * d for n in heads]
    recv = y.new_empty(sum(recv_sizes))
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=group)
    if order is None and len(set(heads)) == 1:  # equal head groups: (P, L_rank, B, H/P, D) to (B, L_rank, H, D)
        p = len(heads)
        return recv.view(p, l_local, b, heads[0], d).permute(2, 1, 0, 3, 4).reshape(b, l_local, p * heads[0], d)
    out = y.new_empty(b, l_local, sum(heads), d)
    offset = 0
    for (start, stop), size in zip(_head_slices(heads), recv_sizes):
        block = recv[offset : offset + size].view(l_local, b, stop - start, d).permute(1, 0, 2, 3)
        if order is None:
            out[:, :, start:stop].copy_(block)
        else:
            out.index_copy_(2, order[start:stop], block)
        offset += size
    return out


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, rank, seq_lens, heads, order):
        ctx.args = (group, rank, seq_lens, heads)
        ctx.save_for_backward(order)
        return _seq_to_heads(x, group, rank, seq_lens, heads, order)

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return _HeadsToSeq.apply(grad, *ctx.args, order), None, None, None, None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, group, rank, seq_lens, heads, order):
        ctx.args = (group, rank, seq_lens, heads)
        ctx.save_for_backward(order)
        return _heads_to_seq(y, group, rank, seq_lens, heads, order)

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return _SeqToHeads.apply(grad, *ctx.args, order), None, None, None, None, None


class _SumGradInGroup(torch.autograd.Function):
    """Identity forward; the backward all-reduces (sums) the gradient over the group: for a parameter every rank
    uses on different heads, each rank's gradient becomes the full one."""

    @staticmethod
    def forward(ctx, w, group):
        ctx.group = group
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_to_all_sequence_to_heads(
    x: torch.Tensor, group=None, *, seq_lens: Sequence[int], head_order: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Differentiable Ulysses all-to-all on (B, L_rank, H, D): returns (B, L, H_rank, D) (see the module doc)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    heads = head_counts(x.shape[2], world)
    order = _order_tensor(head_order, x.shape[2], x.device)
    return _SeqToHeads.apply(x, group, rank, tuple(int(n) for n in seq_lens), tuple(heads), order)


def all_to_all_heads_to_sequence(
    y: torch.Tensor, group=None, *, seq_lens: Sequence[int], heads: int, head_order: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """The reverse of `all_to_all_sequence_to_heads`: (B, L, H_rank, D) -> (B, L_rank, H, D)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    order = _order_tensor(head_order, heads, y.device)
    return _HeadsToSeq.apply(y, group, rank, tuple(int(n) for n in seq_lens), tuple(head_counts(heads, world)), order)


def _rule_for_heads(rule: BlockRule, heads: Sequence[int]) -> BlockRule:
    """The rule of a rank's heads: per-head values (topk, top_p) of those heads, in order; a rule that has one
    value for every head is the same on every rank."""
    if rule.heads is None:
        return rule

    def pick(values):
        return tuple(values[int(h)] for h in heads) if isinstance(values, tuple) else values

    return dataclasses.replace(rule, topk=pick(rule.topk), top_p=pick(rule.top_p))


def _order_tensor(head_order, heads: int, device) -> Optional[torch.Tensor]:
    if head_order is None:
        return None
    order = [int(h) for h in head_order]
    if sorted(order) != list(range(heads)):
        raise ValueError(f"head_order: expected a permutation of range({heads}) (H = {heads}), got {order}")
    if order == list(range(heads)):
        return None
    return torch.tensor(order, dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------------------------------------------
# The layer


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The fixed part of each rank's size record; its seq_lens (padded with -1 to the world size) follow.
_FIELDS = ("ok", "L", "B", "H", "D", "Dv", "dtype", "seq_lens given", "len(seq_lens)", "head order")


def _local_sizes(q, k, v, layout: str, world: int, rank: int, seq_lens, head_order) -> list[int]:
    """This rank's checks that need no other rank (raising naming the argument), and its size record."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _options.check_attention_tensor(name, t)
        _options.check_rank4(name, t, layout)
    qs, ks, vs = (_options.to_bhld(t, layout).shape for t in (q, k, v))  # (B, H, L, D)
    if ks[2] != qs[2] or vs[2] != qs[2]:
        raise ValueError(
            f"k, v: sequence-parallel SLA is self-attention: expected the local sequence length of q "
            f"(L = {qs[2]}), got k: {ks[2]}, v: {vs[2]} (run cross-attention without sequence parallelism)"
        )
    if ks[1] != qs[1] or vs[1] != qs[1]:
        raise ValueError(f"k, v: expected the head count of q (H = {qs[1]}), got k: {ks[1]}, v: {vs[1]}")
    head_counts(qs[1], world)  # raises, naming heads and world size, when H < P
    order = 0
    if head_order is not None:
        _order_tensor(head_order, qs[1], "cpu")  # raises unless a permutation of the heads
        order = hash(tuple(int(h) for h in head_order))  # ints hash alike in every process
    lens = []
    if seq_lens is not None:
        lens = [int(n) for n in seq_lens]
        if len(lens) != world or lens[rank] != qs[2] or min(lens) < 0:
            raise ValueError(
                f"seq_lens: expected {world} shard lengths (one per rank) with this rank's "
                f"(rank {rank}) equal to its local length {qs[2]}, got {lens}"
            )
    dtype = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else len(_DTYPES)
    sizes = [1, qs[2], qs[0], qs[1], qs[3], vs[3], dtype, int(seq_lens is not None), len(lens), order]
    return sizes + (lens + [-1] * world)[:world]


def _check_shapes(
    q, k, v, layout: str, group, seq_lens: Optional[Sequence[int]], head_order=None, local_error=None
) -> list[int]:
    """The ranks' shard lengths, after the checks that turn bad or mismatching input into an error on every rank,
    never a hang or an abort inside the all-to-all (whose split sizes come from these numbers): one all-gather of
    each rank's sizes (and its view of seq_lens), first, whatever the input; a rank whose own input is bad raises
    its error and the others raise one naming that rank. `local_error`: an error of this rank's other arguments,
    raised the same way (after the gather, so that the other ranks do not wait in it)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world == 1 or (seq_lens is not None and torch.compiler.is_compiling()):
        # One rank: nothing to agree on. Under torch.compile the gather would break the graph, so the caller's
        # seq_lens are trusted there (docs/PYTHON.md).
        _local_sizes(q, k, v, layout, world, rank, seq_lens, head_order)
        if local_error is not None:
            raise local_error
        return [_options.to_bhld(q, layout).shape[2]] if world == 1 else [int(n) for n in seq_lens]
    error = local_error
    try:
        mine = _local_sizes(q, k, v, layout, world, rank, seq_lens, head_order)
    except (TypeError, ValueError) as exc:
        error = exc
    if error is not None:
        mine = [0] * (len(_FIELDS) + world)
    device = _collective_device(q, group) if isinstance(q, torch.Tensor) else torch.device("cpu")
    table = _gather_ints(mine, group, device)  # (world, fields + world)
    bad = [r for r in range(world) if table[r, 0] != 1]
    if error is not None:
        raise error
    if bad:
        raise ValueError(f"q, k, v: bad input on rank(s) {bad} of the sequence-parallel group (see their error)")
    col = {name: table[:, i].tolist() for i, name in enumerate(_FIELDS)}
    for name, what in (("B", "batch size B"), ("H", "heads H"), ("D", "head dim D"), ("Dv", "head dim of v")):
        if len(set(col[name])) != 1:
            raise ValueError(
                f"q, k, v: every rank of the sequence-parallel group must have the same {what}; "
                f"got {col[name]} across ranks 0..{world - 1}"
            )
    if len(set(col["dtype"])) != 1:
        names = [str(_DTYPES[i]) if i < len(_DTYPES) else "other" for i in col["dtype"]]
        raise ValueError(f"q, k, v: every rank must have the same dtype; got {names} across ranks 0..{world - 1}")
    if len(set(col["head order"])) != 1:
        raise ValueError("head_order: every rank of the sequence-parallel group must pass the same head order")
    lens = col["L"]
    given = col["seq_lens given"]
    wrong = [
        f"rank {r} passed {table[r, len(_FIELDS) :].tolist()}"
        for r in range(world)
        if given[r] and table[r, len(_FIELDS) :].tolist() != lens
    ]
    if wrong:
        raise ValueError(f"seq_lens: the ranks disagree: their local lengths are {lens}, but {'; '.join(wrong)}")
    return lens


def ulysses_sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: Optional[PerHead] = None,
    group: Optional[dist.ProcessGroup] = None,
    seq_lens: Optional[Sequence[int]] = None,
    head_order: Optional[Sequence[int]] = None,
    reduce_proj_grad: bool = False,
    layout: str = "BHLD",
    proj_weight: Optional[torch.Tensor] = None,
    proj_bias: Optional[torch.Tensor] = None,
    block_map: Optional[BlockMap] = None,
    return_block_map: bool = False,
    **options,
):
    """`sla.sparse_linear_attention` on a sequence sharded over `group` (Ulysses).

    Args:
        q, k, v: this rank's shard of the sequence, (B, L_rank, H, D) for ``layout='BLHD'`` or (B, H, L_rank, D)
            for ``'BHLD'``; the ranks' shards, concatenated in rank order, are the full sequence. Self-attention only
            (q, k, v share the shard).
        group: the sequence-parallel process group (None: the default group).
        seq_lens: every rank's shard length, in rank order (e.g. `shard_lengths(L, P)` for `torch.tensor_split`);
            None: the lengths gathered. Either way one small all-gather of every rank's sizes comes first (B, H, D,
            Dv, dtype, head order, its seq_lens), so that input that does not agree across the ranks (or is bad on
            one of them) raises a ValueError on every rank instead of aborting or hanging in the all-to-all; it is
            read on the host (a synchronisation on GPUs). Under torch.compile, with `seq_lens` given, the gather
            is skipped (it would break the graph) and the caller vouches for agreeing shapes.
        topk, top_p, rule, ...: the block-selection rule as for `sla.sparse_linear_attention`; per-head values are
            for all H heads, each rank using those of its heads.
        head_order: a permutation of the heads; rank p runs the p-th contiguous group of it (`head_counts` sizes).
            `balanced_head_order` makes one that balances per-head costs. None: heads in order.
        reduce_proj_grad: sum the gradients of proj_weight and proj_bias over the group in the backward pass (each
            rank's are partial sums over its heads). Leave False when the caller's data-parallel reduction spans the
            sequence-parallel ranks (it must, for every other weight of a sequence-sharded model).
        block_map: a map for this rank's heads on the full sequence (from ``return_block_map=True`` of an earlier
            call with the same group and head order).
        layout, proj_weight, proj_bias, return_block_map and `options` (block_q, block_k, feature_map,
            variant, negligible, scale, eps, the rule options): as for `sla.sparse_linear_attention`.

    Returns:
        This rank's shard of O in the layout and dtype of q, or (O, the BlockMap of this rank's heads).
    """
    _options.check_choice("layout", layout, _options.LAYOUTS)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "group: sequence-parallel SLA needs torch.distributed initialised (torch.distributed.init_process_group)"
        )
    # The rule (checked here, raised by _check_shapes after its gather, so that every rank raises together).
    rule, rule_error = None, None
    if block_map is None:
        try:
            given = {name: options.pop(name) for name in RULE_OPTIONS if name != "topk" and name in options}
            rule = rule_of(options.pop("rule", None), topk=topk, **given)
            if isinstance(q, torch.Tensor) and q.dim() == 4:
                rule.check_layer(options.get("variant", "global"), _options.to_bhld(q, layout).shape[1])
        except (TypeError, ValueError) as exc:
            rule_error = exc
    lens = _check_shapes(q, k, v, layout, group, seq_lens, head_order, rule_error)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world == 1:  # one rank holds every head of the whole sequence: the plain layer, no copies
        return sparse_linear_attention(
            q,
            k,
            v,
            rule=rule,
            layout=layout,
            proj_weight=proj_weight,
            proj_bias=proj_bias,
            block_map=block_map,
            return_block_map=return_block_map,
            **options,
        )
    heads = q.shape[1] if layout == "BHLD" else q.shape[2]
    counts = tuple(head_counts(heads, world))
    order = _order_tensor(head_order, heads, q.device)
    lens = tuple(lens)
    if rule is not None:
        start, stop = _head_slices(counts)[rank]
        rule = _rule_for_heads(rule, head_order[start:stop] if head_order is not None else range(start, stop))

    def scatter_heads(t):
        return _SeqToHeads.apply(_options.to_bhld(t, layout).transpose(1, 2), group, rank, lens, counts, order)

    # (B, L, H_rank, D) views; SLA reads them in place as BLHD.
    qh, kh, vh = scatter_heads(q), scatter_heads(k), scatter_heads(v)
    if reduce_proj_grad:
        proj_weight = _SumGradInGroup.apply(proj_weight, group) if proj_weight is not None else None
        proj_bias = _SumGradInGroup.apply(proj_bias, group) if proj_bias is not None else None
    o, bmap = sparse_linear_attention(
        qh,
        kh,
        vh,
        rule=rule,
        layout="BLHD",
        proj_weight=proj_weight,
        proj_bias=proj_bias,
        block_map=block_map,
        return_block_map=True,
        **options,
    )
    o = _HeadsToSeq.apply(o, group, rank, lens, counts, order)  # (B, L_rank, H, D), contiguous
    o = o if layout == "BLHD" else o.transpose(1, 2)
    return (o, bmap) if return_block_map else o


class UlyssesSparseLinearAttention(SparseLinearAttention):
    """`sla.SparseLinearAttention` on a sequence sharded over a process group (Ulysses); the same parameters and
    state-dict keys (``proj_l.weight``, ``proj_l.bias``), so a checkpoint of either loads into the other.

    Extra constructor arguments: `process_group` (None: the default group, looked up at call time),
    `reduce_proj_grad` (see `ulysses_sparse_linear_attention`), `head_order`.
    """

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
        process_group=None,
        reduce_proj_grad: bool = False,
        head_order: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        super().__init__(head_dim, topk, feature_map, BLKQ, BLKK, use_bf16, tie_feature_map_qk, **kwargs)
        _options.check_bool("reduce_proj_grad", reduce_proj_grad)
        if head_order is not None:
            head_order = [int(h) for h in head_order]
            if sorted(head_order) != list(range(len(head_order))):
                raise ValueError(f"head_order: expected a permutation of range(H), got {head_order}")
        self.process_group = process_group
        self.reduce_proj_grad = reduce_proj_grad
        self.head_order = head_order

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        return_sparsity: bool = False,
        block_map: Optional[BlockMap] = None,
        seq_lens: Optional[Sequence[int]] = None,
    ):
        """As `SparseLinearAttention.forward` on this rank's sequence shard; `seq_lens` as for
        `ulysses_sparse_linear_attention`. Returns this rank's shard of O (or (O, T / Nk))."""
        dtype = q.dtype
        if q.is_cuda:
            q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
        o, bmap = ulysses_sparse_linear_attention(
            q,
            k,
            v,
            rule=self.rule,
            group=self.process_group,
            seq_lens=seq_lens,
            head_order=self.head_order,
            reduce_proj_grad=self.reduce_proj_grad,
            layout=self.layout,
            block_q=self.BLKQ,
            block_k=self.BLKK,
            feature_map=self.feature_map,
            variant=self.variant,
            scale=self.scale,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            block_map=block_map,
            return_block_map=True,
        )
        o = o.to(dtype)
        if return_sparsity:
            return o, (bmap.density if self.rule.is_fixed else bmap.mean_density)
        return o

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reduce_proj_grad={self.reduce_proj_grad}"


__all__ = [
    "UlyssesSparseLinearAttention",
    "all_to_all_heads_to_sequence",
    "all_to_all_sequence_to_heads",
    "balanced_head_order",
    "gather_shard_lengths",
    "head_counts",
    "shard_lengths",
    "ulysses_sparse_linear_attention",
]
