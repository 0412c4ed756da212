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

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from . import _options
from .blockmap import BlockMap
from .functional import sparse_linear_attention
from .module import SparseLinearAttention

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


def _check_shapes(q, k, v, layout: str, group, seq_lens: Optional[Sequence[int]]) -> list[int]:
    """The ranks' shard lengths, with the checks that turn a mismatch between ranks into an error on every rank
    (instead of a hang or garbage in the all-to-all)."""
    world = dist.get_world_size(group)
    qs, ks, vs = (_options.to_bhld(t, layout).shape for t in (q, k, v))  # (B, H, L, D)
    if ks[2] != qs[2] or vs[2] != qs[2]:
        raise ValueError(
            f"k, v: sequence-parallel SLA is self-attention: expected the local sequence length of q "
            f"(L = {qs[2]}), got k: {ks[2]}, v: {vs[2]} (run cross-attention without sequence parallelism)"
        )
    if ks[1] != qs[1] or vs[1] != qs[1]:
        raise ValueError(f"k, v: expected the head count of q (H = {qs[1]}), got k: {ks[1]}, v: {vs[1]}")
    head_counts(qs[1], world)  # raises, naming heads and world size, when H < P
    if seq_lens is not None:
        seq_lens = [int(n) for n in seq_lens]
        if len(seq_lens) != world or seq_lens[dist.get_rank(group)] != qs[2] or min(seq_lens) < 0:
            raise ValueError(
                f"seq_lens: expected {world} shard lengths (one per rank) with this rank's "
                f"(rank {dist.get_rank(group)}) equal to its local length {qs[2]}, got {seq_lens}"
            )
        return seq_lens
    dims = _gather_ints([qs[2], qs[0], qs[1], qs[3], vs[3]], group, _collective_device(q, group))
    mine = dims[dist.get_rank(group)]
    for name, col in (("batch size B", 1), ("heads H", 2), ("head dim D", 3), ("head dim of v", 4)):
        if not torch.equal(dims[:, col], mine[col].expand(world)):
            raise ValueError(
                f"q, k, v: every rank of the sequence-parallel group must have the same {name}; "
                f"got {dims[:, col].tolist()} across ranks 0..{world - 1}"
            )
    return [int(n) for n in dims[:, 0]]


def ulysses_sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: float,
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
        seq_lens: every rank's shard length, in rank order (e.g. `shard_lengths(L, P)` for `torch.tensor_split`).
            None gathers them (one small collective that also checks that B, H, D agree across ranks; it reads
            them on the host, a synchronisation on GPUs). With `seq_lens` the caller vouches for matching shapes.
        head_order: a permutation of the heads; rank p runs the p-th contiguous group of it (`head_counts` sizes).
            `balanced_head_order` makes one that balances per-head costs. None: heads in order.
        reduce_proj_grad: sum the gradients of proj_weight and proj_bias over the group in the backward pass (each
            rank's are partial sums over its heads). Leave False when the caller's data-parallel reduction spans the
            sequence-parallel ranks (it must, for every other weight of a sequence-sharded model).
        block_map: a map for this rank's heads on the full sequence (from ``return_block_map=True`` of an earlier
            call with the same group and head order).
        topk, layout, proj_weight, proj_bias, return_block_map and `options` (block_q, block_k, feature_map,
            variant, negligible, scale, eps): as for `sla.sparse_linear_attention`.

    Returns:
        This rank's shard of O in the layout and dtype of q, or (O, the BlockMap of this rank's heads).
    """
    _options.check_choice("layout", layout, _options.LAYOUTS)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _options.check_tensor(name, t)
        _options.check_rank4(name, t, layout)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "group: sequence-parallel SLA needs torch.distributed initialised (torch.distributed.init_process_group)"
        )
    lens = _check_shapes(q, k, v, layout, group, seq_lens)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world == 1:  # one rank holds every head of the whole sequence: the plain layer, no copies
        return sparse_linear_attention(
            q,
            k,
            v,
            topk=topk,
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
        topk=topk,
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
        topk: float,
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
        self.process_group = process_group
        self.reduce_proj_grad = reduce_proj_grad
        self.head_order = None if head_order is None else [int(h) for h in head_order]

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
            topk=self.topk,
            group=self.process_group,
            seq_lens=seq_lens,
            head_order=self.head_order,
            reduce_proj_grad=self.reduce_proj_grad,
            layout=self.layout,
            block_q=self.BLKQ,
            block_k=self.BLKK,
            feature_map=self.feature_map,
            variant=self.variant,
            negligible=self.negligible,
            scale=self.scale,
            proj_weight=self.proj_l.weight,
            proj_bias=self.proj_l.bias,
            block_map=block_map,
            return_block_map=True,
        )
        o = o.to(dtype)
        return (o, bmap.density) if return_sparsity else o

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
