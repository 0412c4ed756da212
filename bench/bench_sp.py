#!/usr/bin/env python3
"""Scaling of Ulysses sequence-parallel SLA (sla.distributed) over 1, 2, 4, 8 GPUs, against dense cuDNN attention
under the same Ulysses split, launched with torchrun (one process per GPU, NCCL).

Layer mode (default): W3 of docs/PERF.md (Wan2.1-14B 720p: B 1, H 40, L 75600, D 128, bf16, topk 0.1, 128 x 64
blocks). The launched world is cut into groups of P ranks for every P in --degrees that divides it; all groups run
at once (as data-parallel replicas would, so the interconnect carries a full node's traffic) and rank 0 reports its
group. Per step, for P ranks each holding L / P tokens of all heads:
    SLA         the whole sequence-parallel layer: all-to-all of q, k, v, SLA on H / P heads, all-to-all of O
    a2a         the four all-to-alls alone (same shapes): their share of the SLA step
    cuDNN       dense attention under the same split: the same four all-to-alls around cuDNN SDPA
and with --backward the forward+backward step of both (dq, dk, dv, dW, db; the backward's four all-to-alls).
Method (docs/PERF.md): CUDA events, a group barrier before every timed call, warm-up first, the median of --iters.

DiT mode (--dit 14B|1.3B): one denoising forward of bench/bench_dit.py's Wan2.1 transformer (random weights from
the published configuration, bf16 with diffusers' fp32 modules, 720p x 81 frames for 14B) under diffusers' context
parallelism with
ContextParallelConfig(ulysses_degree=world) (none for one GPU), dense (diffusers' "_native_cudnn" backend, its own
Ulysses) against SLA (sla.diffusers.enable_sla, topk 0.1; sla.distributed's Ulysses). diffusers' mesh spans the
whole world, so run it once per GPU count.

Usage:
    torchrun --standalone --nproc-per-node=8 bench/bench_sp.py                   # P = 1, 2, 4, 8 in one launch
    torchrun --standalone --nproc-per-node=8 bench/bench_sp.py --backward --json sp.json
    for n in 1 2 4 8; do torchrun --standalone --nproc-per-node=$n bench/bench_sp.py --dit 14B; done
    python3 -m torch.distributed.run --nproc-per-node=2 bench/bench_sp.py --smoke   # CPU, gloo, tiny (tested)
Prints progress to stderr and a markdown table to stdout (rank 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sla
import sla.distributed as sd

SHAPES = {  # id -> (what, B, H, L, D, topk, block_q, block_k)
    "W1": ("Wan2.1-1.3B 480p", 1, 12, 32760, 128, 0.05, 128, 64),
    "W3": ("Wan2.1-14B 720p", 1, 40, 75600, 128, 0.10, 128, 64),
    "smoke": ("tiny, CPU", 1, 8, 1000, 32, 0.25, 64, 64),
}


def log(msg: str) -> None:
    if dist.get_rank() == 0:
        print(msg, file=sys.stderr, flush=True)


class Timer:
    """Median time of fn() in ms: CUDA events on the GPU, perf_counter on the CPU; a barrier of `group` first, so
    that every rank starts each call together and the slowest rank's time is what the group sees."""

    def __init__(self, device: torch.device, group, iters: int, warmup: int):
        self.device, self.group, self.iters, self.warmup = device, group, iters, warmup

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            dist.barrier(group=self.group)
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                import time

                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        # The group's time is its slowest rank's.
        t = torch.tensor([statistics.median(times)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t.item())

    def _collective_device(self):
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def dense_attention(q, k, v, device):
    """Dense attention on (B, L, H, D) views: cuDNN on the GPU, PyTorch's math on the CPU."""
    backend = SDPBackend.CUDNN_ATTENTION if device.type == "cuda" else SDPBackend.MATH
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def ulysses_dense(q, k, v, group, lens, device):
    """Dense attention under the same Ulysses split as sla.distributed (its differentiable all-to-alls)."""
    heads = q.shape[2]
    qh, kh, vh = (sd.all_to_all_sequence_to_heads(t, group, seq_lens=lens) for t in (q, k, v))
    o = dense_attention(qh, kh, vh, device)
    return sd.all_to_all_heads_to_sequence(o, group, seq_lens=lens, heads=heads)


def bench_layer(args, device, dtype) -> list[dict]:
    what, b, h, length, d, topk, block_q, block_k = SHAPES[args.shape]
    world, rank = dist.get_world_size(), dist.get_rank()
    rows = []
    for p in args.degrees:
        if world % p != 0 or h < p:
            log(f"P={p}: skipped (world {world} is not a multiple, or H = {h} < P)")
            continue
        groups = [dist.new_group(list(range(s, s + p))) for s in range(0, world, p)]  # every rank creates all
        group = groups[rank // p]
        timer = Timer(device, group, args.iters, args.warmup)
        lens = sd.shard_lengths(length, p)
        local = lens[dist.get_rank(group)]
        gen = torch.Generator(device=device).manual_seed(rank)
        q, k, v, g = (torch.randn(b, local, h, d, generator=gen, device=device).to(dtype) for _ in range(4))
        w = 0.05 * torch.randn(d, d, generator=gen, device=device)
        bias = 0.05 * torch.randn(d, generator=gen, device=device)
        opts = dict(topk=topk, block_q=block_q, block_k=block_k, variant=args.variant, layout="BLHD")
        row = dict(P=p, shape=args.shape, what=what, B=b, H=h, L=length, D=d, topk=topk, variant=args.variant)
        log(f"P={p}: {what} B{b} H{h} L{length} D{d} topk {topk}, {local} tokens per rank")

        def sla_fwd():
            with torch.no_grad():
                return sd.ulysses_sparse_linear_attention(
                    q, k, v, group=group, seq_lens=lens, proj_weight=w, proj_bias=bias, **opts
                )

        def a2a_only():
            with torch.no_grad():
                qh, kh, vh = (sd.all_to_all_sequence_to_heads(t, group, seq_lens=lens) for t in (q, k, v))
                return sd.all_to_all_heads_to_sequence(qh, group, seq_lens=lens, heads=h)

        def dense_fwd():
            with torch.no_grad():
                return ulysses_dense(q, k, v, group, lens, device)

        row["sla_fwd_ms"] = timer(sla_fwd)
        row["a2a_ms"] = timer(a2a_only)
        row["dense_fwd_ms"] = timer(dense_fwd)
        if args.backward:
            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
            wl, bl = w.detach().requires_grad_(True), bias.detach().requires_grad_(True)

            def sla_step():
                o = sd.ulysses_sparse_linear_attention(
                    *leaves, group=group, seq_lens=lens, proj_weight=wl, proj_bias=bl, reduce_proj_grad=True, **opts
                )
                o.backward(g)

            def dense_step():
                ulysses_dense(*leaves, group, lens, device).backward(g)

            row["sla_fwdbwd_ms"] = timer(sla_step)
            row["dense_fwdbwd_ms"] = timer(dense_step)
        rows.append(row)
        log(f"  {row}")
        del q, k, v, g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def layer_table(rows: list[dict], device_name: str) -> str:
    base = {r["variant"]: r for r in rows if r["P"] == 1}
    out = [
        f"Ulysses SLA, {device_name}, {datetime.date.today()}: {rows[0]['what']} (B {rows[0]['B']}, H "
        f"{rows[0]['H']}, L {rows[0]['L']}, D {rows[0]['D']}), topk {rows[0]['topk']}, {rows[0]['variant']}",
        "",
        "| GPUs | SLA fwd (ms) | all-to-all (ms, share) | cuDNN fwd (ms) | SLA vs cuDNN | SLA scaling eff. |"
        + (" SLA fwd+bwd (ms) | cuDNN fwd+bwd (ms) |" if "sla_fwdbwd_ms" in rows[0] else ""),
        "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if "sla_fwdbwd_ms" in rows[0] else ""),
    ]
    for r in rows:
        b = base.get(r["variant"])
        eff = f"{b['sla_fwd_ms'] / (r['P'] * r['sla_fwd_ms']):.2f}" if b else "-"
        line = (
            f"| {r['P']} | {r['sla_fwd_ms']:.2f} | {r['a2a_ms']:.2f} ({r['a2a_ms'] / r['sla_fwd_ms']:.0%}) | "
            f"{r['dense_fwd_ms']:.2f} | {r['dense_fwd_ms'] / r['sla_fwd_ms']:.2f}x | {eff} |"
        )
        if "sla_fwdbwd_ms" in r:
            line += f" {r['sla_fwdbwd_ms']:.2f} | {r['dense_fwdbwd_ms']:.2f} |"
        out.append(line)
    return "\n".join(out)


def bench_dit(args, device) -> str:
    """One denoising forward of bench_dit.py's Wan2.1 model (same configuration, inputs and fp32 modules) under
    diffusers' context parallelism over the whole world: dense cuDNN, then SLA."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit
    from diffusers import ContextParallelConfig

    import sla.diffusers as sdf

    bench_dit.DEVICE = device.type
    world = dist.get_world_size()
    model = bench_dit.build_model(args.dit, torch.bfloat16)
    model.set_attention_backend(bench_dit.DENSE_BACKEND if device.type == "cuda" else "native")
    if world > 1:
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    latents, timestep, text = bench_dit.make_inputs(args.dit, torch.bfloat16)
    timer = Timer(device, None, args.iters, args.warmup)

    def step():
        with torch.no_grad():
            return model(latents, timestep, text, return_dict=False)[0]

    log(f"DiT {args.dit}: dense forward on {world} GPU(s)")
    dense_ms = timer(step)
    # enable_sla keeps the parallel configuration diffusers set on the dense processors.
    sdf.enable_sla(model, topk=bench_dit.MODELS[args.dit]["topk"], block_q=bench_dit.BLOCK_Q, block_k=bench_dit.BLOCK_K)
    log(f"DiT {args.dit}: SLA forward on {world} GPU(s)")
    sla_ms = timer(step)
    tokens = bench_dit.tokens_of(bench_dit.MODELS[args.dit]["latents"])
    return (
        f"| Wan2.1-{args.dit} forward, {tokens} tokens | {world} | {dense_ms:.0f} | {sla_ms:.0f} | "
        f"{dense_ms / sla_ms:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="W3", choices=sorted(SHAPES))
    parser.add_argument("--degrees", default="1,2,4,8", help="sequence-parallel degrees P to measure")
    parser.add_argument("--variant", default="global", choices=("global", "complement"))
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dit", choices=("1.3B", "14B"), help="time bench_dit.py's Wan transformer forward instead")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny shape: checks that the script runs")
    parser.add_argument("--json", help="write the rows (layer mode) to this file (rank 0)")
    args = parser.parse_args()
    if args.json:  # every rank, before the process group: a report that cannot be written fails now
        try:
            sla.atomic.check_output_path("--json", args.json)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    args.degrees = [int(x) for x in args.degrees.split(",")]
    if args.smoke:
        args.shape, args.iters, args.warmup = "smoke", 2, 1
    if "LOCAL_RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --standalone --nproc-per-node=8 bench/bench_sp.py")
    local = int(os.environ["LOCAL_RANK"])
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        torch.set_num_threads(1)
        device_name = "CPU (gloo)"
    else:
        if not (torch.cuda.is_available() and sla.cuda_available()):
            parser.error("needs CUDA GPUs and the library's CUDA backend (or --smoke on the CPU)")
        device, dtype = torch.device("cuda", local), torch.bfloat16
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=datetime.timedelta(seconds=600))
        device_name = torch.cuda.get_device_name(device)
    try:
        if args.dit:
            row = bench_dit(args, device)
            if dist.get_rank() == 0:
                print(f"| model | GPUs | cuDNN (ms) | SLA (ms) | speedup |  ({device_name}, {datetime.date.today()})")
                print(row)
        else:
            rows = bench_layer(args, device, dtype)
            if dist.get_rank() == 0 and rows:
                print(layer_table(rows, device_name))
                if args.json:
                    report = {"device": device_name, "world": dist.get_world_size(), "rows": rows}
                    sla.atomic.write_text(args.json, json.dumps(report, indent=1) + "\n")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
