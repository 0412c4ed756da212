"""The per-rank side of the sequence-parallel tests (tests/python/test_distributed.py).

`run_group` is the entry point of each spawned process: it joins a gloo group over a FileStore, runs every case
whose rank count fits, and writes {case name: None or the failure text} to a JSON file per rank. Each case draws the
full problem from a seed shared by all ranks, runs the single-process SLA on it, runs the sequence-parallel SLA on
this rank's shard, and compares O and every gradient.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Case:
    name: str
    world: int
    heads: int = 6
    length: int = 100
    layout: str = "BLHD"
    variant: str = "global"
    seq_lens: Optional[tuple[int, ...]] = None  # None: torch.tensor_split's shards
    pass_seq_lens: bool = True  # False: let the layer gather them
    head_order: Optional[tuple[int, ...]] = None
    reduce_proj_grad: bool = True
    module: bool = False
    compiled: bool = False
    options: dict = field(default_factory=dict)


def cases() -> list[Case]:
    out = []
    for world in (2, 3):
        for layout in ("BLHD", "BHLD"):
            for variant in ("global", "complement"):
                opts = {"negligible": 0.2} if variant == "complement" else {}
                out.append(Case(f"p{world}-{layout}-{variant}", world, layout=layout, variant=variant, options=opts))
    out += [
        # Ragged shards: 101 tokens over 2 and 3 ranks (tensor_split), and arbitrary shards including an empty one.
        Case("p2-ragged-101", 2, length=101, pass_seq_lens=False),
        Case(
            "p3-ragged-101-BHLD-complement",
            3,
            length=101,
            layout="BHLD",
            variant="complement",
            options={"negligible": 0.1},
        ),
        Case("p3-shards-60-0-41", 3, length=101, seq_lens=(60, 0, 41)),
        # Heads that do not divide the ranks (7 heads over 2, 3 and 4 ranks) and a balancing head order.
        Case("p2-7-heads", 2, heads=7),
        Case("p3-7-heads-BHLD", 3, heads=7, layout="BHLD", length=97),
        Case("p4-7-heads", 4, heads=7, length=130),
        Case("p4-4-heads-elu", 4, heads=4, options={"feature_map": "elu", "block_q": 32, "block_k": 16}),
        Case("p3-head-order", 3, head_order=(5, 0, 3, 1, 4, 2)),
        # Per-head rules: each rank uses the values of its own heads (here in a permuted order).
        Case(
            "p3-per-head-topk-head-order",
            3,
            head_order=(5, 0, 3, 1, 4, 2),
            options={"topk": (0.2, 0.4, 0.6, 0.3, 0.5, 1.0)},
        ),
        Case(
            "p2-per-head-top-p-7-heads", 2, heads=7, options={"topk": None, "top_p": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1)}
        ),
        Case("p2-module-per-head-topk", 2, module=True, options={"topk": (0.2, 0.4, 0.6, 0.3, 0.5, 1.0)}),
        # The projection gradients left local (their sum over ranks is the full gradient).
        Case("p2-local-proj-grad", 2, reduce_proj_grad=False),
        Case("p3-local-proj-grad-7-heads", 3, heads=7, length=101, reduce_proj_grad=False),
        # The module form, and torch.compile(fullgraph=True) against eager.
        Case("p2-module-BHLD", 2, layout="BHLD", module=True),
        Case("p3-module-ragged", 3, length=101, module=True, pass_seq_lens=False),
        Case("p2-compiled", 2, length=101, compiled=True),
    ]
    return out


def _problem(case: Case):
    """Full q, k, v, upstream gradient, W, b: the same on every rank (one seed)."""
    gen = torch.Generator().manual_seed(1234 + len(case.name) * 7919 + sum(map(ord, case.name)))
    shape = (1, case.length, case.heads, 16)  # BLHD
    q, k, v, g = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4))
    w = 0.3 * torch.randn(16, 16, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(16, generator=gen, dtype=torch.float64)
    return q, k, v, g, w, b


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t if layout == "BLHD" else t.transpose(1, 2)


def _sla_options(case: Case) -> dict:
    opts = {"topk": 0.3, "block_q": 16, "block_k": 16, "variant": case.variant}
    opts.update(case.options)
    return opts


def _run_single(case: Case, q, k, v, g, w, b):
    import sla

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, w, b)]
    ql, kl, vl, wl, bl = leaves
    if case.module:
        layer = _module(sla.SparseLinearAttention, case, w, b)
        o = layer(_layout(ql, case.layout), _layout(kl, case.layout), _layout(vl, case.layout))
        leaves = [ql, kl, vl, layer.proj_l.weight, layer.proj_l.bias]
    else:
        o = sla.sparse_linear_attention(
            _layout(ql, case.layout),
            _layout(kl, case.layout),
            _layout(vl, case.layout),
            layout=case.layout,
            proj_weight=wl,
            proj_bias=bl,
            **_sla_options(case),
        )
    (o * _layout(g, case.layout)).sum().backward()
    return _layout(o, case.layout).detach(), [t.grad for t in leaves]


def _module(cls, case: Case, w, b, **kwargs):
    opts = _sla_options(case)
    layer = cls(
        16,
        opts["topk"],
        BLKQ=opts["block_q"],
        BLKK=opts["block_k"],
        variant=case.variant,
        layout=case.layout,
        negligible=opts.get("negligible", 0.0),
        **kwargs,
    ).double()
    with torch.no_grad():
        layer.proj_l.weight.copy_(w)
        layer.proj_l.bias.copy_(b)
    return layer


def _run_parallel(case: Case, group, lens, q, k, v, g, w, b):
    import sla.distributed as sd

    rank = dist.get_rank(group)
    start = sum(lens[:rank])
    shard = slice(start, start + lens[rank])
    local = [t[:, shard].clone().requires_grad_(True) for t in (q, k, v)]
    wl, bl = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ql, kl, vl = (_layout(t, case.layout) for t in local)
    seq_lens = list(lens) if case.pass_seq_lens else None
    if case.module:
        layer = _module(
            sd.UlyssesSparseLinearAttention,
            case,
            w,
            b,
            process_group=group,
            reduce_proj_grad=case.reduce_proj_grad,
            head_order=case.head_order,
        )
        o = layer(ql, kl, vl, seq_lens=seq_lens)
        params = [layer.proj_l.weight, layer.proj_l.bias]
    else:

        def attention(ql, kl, vl, wl, bl):
            return sd.ulysses_sparse_linear_attention(
                ql,
                kl,
                vl,
                group=group,
                seq_lens=seq_lens,
                head_order=case.head_order,
                reduce_proj_grad=case.reduce_proj_grad,
                layout=case.layout,
                proj_weight=wl,
                proj_bias=bl,
                **_sla_options(case),
            )

        fn = torch.compile(attention, backend="aot_eager", fullgraph=True) if case.compiled else attention
        o = fn(ql, kl, vl, wl, bl)
        params = [wl, bl]
    (o * _layout(g[:, shard], case.layout)).sum().backward()
    grads = [t.grad for t in local] + [p.grad for p in params]
    return _layout(o, case.layout).detach(), grads, shard


def _check(case: Case, group) -> None:
    world = dist.get_world_size(group)
    lens = (
        list(case.seq_lens)
        if case.seq_lens is not None
        else [len(c) for c in torch.arange(case.length).tensor_split(world)]
    )
    q, k, v, g, w, b = _problem(case)
    o_ref, grads_ref = _run_single(case, q, k, v, g, w, b)
    o, grads, shard = _run_parallel(case, group, lens, q, k, v, g, w, b)
    # Each head runs the same kernel on the same full sequence: O, dq, dk, dv are bitwise those of one process.
    torch.testing.assert_close(o, o_ref[:, shard], rtol=0, atol=0, msg=lambda m: f"O: {m}")
    for name, got, want in zip(("dq", "dk", "dv"), grads[:3], grads_ref[:3]):
        torch.testing.assert_close(got, want[:, shard], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    # dW, db: sums over heads, grouped by rank, so equal to rounding.
    for name, got, want in zip(("dW", "db"), grads[3:], grads_ref[3:]):
        if not case.reduce_proj_grad:
            # Local: a partial sum over this rank's heads; the sum over the group is the full gradient. (It must
            # differ from the full gradient, or the check below would not show that the caller has to reduce it.)
            assert not torch.allclose(got, want), f"{name}: a local gradient equal to the full one"
            got = got.clone()
            dist.all_reduce(got, group=group)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def _check_errors(group) -> None:
    """Bad input fails with a clear error on every rank, not a hang or an abort."""
    import sla
    import sla.distributed as sd

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    x = torch.randn(1, 8, world - 1, 16, dtype=torch.float64)  # BLHD with fewer heads than ranks
    try:
        sd.ulysses_sparse_linear_attention(x, x, x, topk=0.5, group=group, layout="BLHD", seq_lens=[8] * world)
    except ValueError as e:
        assert "heads" in str(e) and f"{world} ranks" in str(e), str(e)
    else:
        raise AssertionError("no error for fewer heads than ranks")
    # Ranks that disagree on H: every rank raises (the shape check gathers B, H, D).
    y = torch.randn(1, 8, world + rank, 16, dtype=torch.float64)
    try:
        sd.ulysses_sparse_linear_attention(y, y, y, topk=0.5, group=group, layout="BLHD")
    except ValueError as e:
        assert "heads H" in str(e), str(e)
    else:
        raise AssertionError("no error for ranks with different head counts")
    try:
        z = torch.randn(1, 8, world, 16, dtype=torch.float64)
        sd.ulysses_sparse_linear_attention(z, z, z, topk=0.5, group=group, layout="BLHD", seq_lens=[8])
    except ValueError as e:
        assert "seq_lens" in str(e), str(e)
    else:
        raise AssertionError("no error for seq_lens of the wrong length")

    def expect_error(pattern: str, what: str, q, k=None, v=None, **kwargs) -> None:
        try:
            kwargs = {"topk": 0.5, **kwargs}
            sd.ulysses_sparse_linear_attention(
                q, q if k is None else k, q if v is None else v, group=group, layout="BLHD", **kwargs
            )
        except ValueError as e:
            assert re.search(pattern, str(e)), f"{what}: {e}"
        else:
            raise AssertionError(f"no error for {what}")

    # Ranks that disagree on seq_lens (each consistent with its own length): gloo used to abort the process.
    z = torch.randn(1, 8, world, 16, dtype=torch.float64)
    claims = [8, 9, 7] if rank == 0 else [8] * world
    expect_error(
        r"^seq_lens: the ranks disagree: their local lengths are \[8, 8, 8\], but rank 0 passed \[8, 9, 7\]$",
        "seq_lens that disagree",
        z,
        seq_lens=claims,
    )
    # Shapes or dtypes that differ on one rank, with seq_lens given (the caller's word used to be trusted).
    d = torch.randn(1, 8, world, 8 if rank == 1 else 16, dtype=torch.float64)
    expect_error(r"same head dim D; got \[16, 8, 16\]", "head dims that differ", d, seq_lens=[8] * world)
    f = z.float() if rank == 2 else z
    expect_error(
        r"same dtype; got \['torch.float64', 'torch.float64', 'torch.float32'\]",
        "dtypes that differ",
        f,
        seq_lens=[8] * world,
    )
    # Bad input on one rank only: that rank names the argument, the others name the rank.
    k = z[:, :5] if rank == 1 else z
    pattern = r"^k, v: sequence-parallel SLA is self-attention" if rank == 1 else r"bad input on rank\(s\) \[1\]"
    expect_error(pattern, "k of another length on rank 1", z, k=k, seq_lens=[8] * world)
    rule = [0.5] * (world + 1) if rank == 0 else [0.5] * world
    expect_error(
        r"^rule: expected H = 3 values" if rank == 0 else r"bad input on rank\(s\) \[0\]",
        "a per-head rule of the wrong length on rank 0",
        z,
        seq_lens=[8] * world,
        topk=None,
        rule=sla.BlockRule.make(topk=rule),
    )


# 3 x 4 x 4 = 48 tokens: equal shards (diffusers' chunk). Ragged shards (ulysses_anything) need NCCL in diffusers
# (its output gather all-gathers tensors of different sizes, which gloo refuses): tests/python/test_distributed_gpu.py.
WAN_CASES = {"wan-ulysses": (8, 8, False)}


def _check_wan(world: int, height: int, width: int, anything: bool) -> None:
    """diffusers' enable_parallelism(ContextParallelConfig(ulysses_degree=world)) on a Wan with SLA self-attention:
    the output and, summed over the ranks, every parameter gradient equal one process's."""
    import copy

    from diffusers import ContextParallelConfig, WanTransformer3DModel

    import sla.diffusers as sdf

    if torch.accelerator.device_count() == 0:
        # diffusers picks the device as rank % accelerator count, which divides by zero on a host without one; the
        # CPU (gloo) run only needs it to be the CPU.
        torch.accelerator.device_count = lambda: 1
    import logging

    if not hasattr(logging.Logger, "warning_once"):
        # diffusers' context-parallel hook warns through Logger.warning_once, which transformers installs when it is
        # imported (every Wan pipeline imports it for the text encoder); this test imports only diffusers.
        logging.Logger.warning_once = logging.Logger.warning
    torch.manual_seed(0)
    tiny = WanTransformer3DModel(**sdf.wan_config("tiny", num_attention_heads=4))  # 4 heads: one per rank of 4
    model = sdf.enable_sla(tiny.double(), topk=0.5, block_q=16, block_k=16)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for proc in sdf.sla_processors(model).values():
            proc.proj_l.weight.copy_(0.3 * torch.randn(16, 16, generator=gen, dtype=torch.float64))
            proc.proj_l.bias.copy_(0.3 * torch.randn(16, generator=gen, dtype=torch.float64))
    latents = torch.randn(1, 4, 3, height, width, generator=gen, dtype=torch.float64)
    text = torch.randn(1, 7, 32, generator=gen, dtype=torch.float64)
    timestep = torch.tensor([500.0])
    parallel = copy.deepcopy(model)

    def run(m):
        # return_dict=False as diffusers' pipelines call it: the context-parallel hook of the root module accepts
        # tensors or tuples of them as outputs.
        out = m(latents, timestep, text, return_dict=False)[0]
        d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
        (out * d_out).sum().backward()
        return out.detach(), {n: p.grad for n, p in m.named_parameters()}

    ref, ref_grads = run(model)
    parallel.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world, ulysses_anything=anything))
    assert isinstance(
        parallel.blocks[0].attn1.processor._parallel_config.context_parallel_config, ContextParallelConfig
    )
    out, grads = run(parallel)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=lambda m: f"output: {m}")
    # diffusers' Wan computes its layer norms (FP32LayerNorm) and its timestep modulations in float32, so the
    # gradients that sum over tokens through them (norm weights, time embedding, and what flows back through
    # them) are float32 sums whose order depends on the split: equal to float32 rounding, ~1e-7 of their size.
    # A missing head, token or reduction would be off by O(1).
    for name, want in ref_grads.items():
        got = grads[name].clone()
        dist.all_reduce(got)  # each rank's gradients are partial sums (its tokens, or for proj_l its heads)
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        assert err <= 2e-6, f"d {name}: error {err:.3g} of its largest element (allowed 2e-6)"


def run_group(rank: int, world: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    # "cpu:gloo" rather than "gloo": diffusers picks the device of its size exchange by "cpu" in the backend name.
    dist.init_process_group(
        "cpu:gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    results: dict[str, Optional[str]] = {}
    try:
        groups = {p: dist.new_group(list(range(p))) for p in range(2, world + 1)}
        for case in cases():
            if case.world > world:
                continue
            if rank >= case.world:
                continue
            try:
                _check(case, groups[case.world])
                results[case.name] = None
            except Exception:  # noqa: BLE001  (reported per case to the test process)
                results[case.name] = traceback.format_exc()
        if rank < 3:
            try:
                _check_errors(groups[3])
                results["errors"] = None
            except Exception:  # noqa: BLE001
                results["errors"] = traceback.format_exc()
        dist.barrier()
        try:
            import diffusers  # noqa: F401
        except ImportError:
            diffusers = None
        for name, (height, width, anything) in WAN_CASES.items():
            if diffusers is None:
                results[name] = "skip: diffusers is not installed"
                continue
            try:
                _check_wan(world, height, width, anything)
                results[name] = None
            except Exception:  # noqa: BLE001
                results[name] = traceback.format_exc()
        dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()
