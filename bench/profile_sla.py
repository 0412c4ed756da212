#!/usr/bin/env python3
"""Where the time of one SLA layer call goes: a per-kernel table (CUDA time per call, launches per call, share of the
call) of the block map, the inference forward and one training step (forward + backward), from torch.profiler's CUDA
activity over several calls. Complements bench/bench_sla.py (which times the whole call against cuDNN) when a kernel
has to be chosen for work.

Usage:
    python3 bench/profile_sla.py                                   # W1, both variants
    python3 bench/profile_sla.py --shape W1 --variants complement --negligible 0,0.5 --block-q 64
Needs a CUDA GPU. Prints markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sla import SHAPES  # noqa: E402

import sla  # noqa: E402


def kernel_table(fn, calls: int) -> tuple[list[tuple[str, float, float]], float]:
    """(name, us per call, launches per call) of every CUDA kernel fn launches, and the total us per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    time_us: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            time_us[ev.name] += ev.device_time
            count[ev.name] += 1
    rows = sorted(((n, t / calls, count[n] / calls) for n, t in time_us.items()), key=lambda r: -r[1])
    return rows, sum(r[1] for r in rows)


def short(name: str, width: int = 70) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="W1", choices=sorted(SHAPES))
    p.add_argument("--variants", default="global,complement")
    p.add_argument("--negligible", default="0", help="k_l values for the complement variant (comma-separated)")
    p.add_argument("--topk", type=float, default=None, help="default: the shape's")
    p.add_argument("--block-q", type=int, default=None)
    p.add_argument("--block-k", type=int, default=None)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_sla.py needs a CUDA GPU", file=sys.stderr)
        return 2
    _, b, h, length, d, topk, bq, bk = SHAPES[args.shape]
    topk = args.topk or topk
    bq, bk = args.block_q or bq, args.block_k or bk
    torch.manual_seed(0)
    shape = (b, h, length, d)
    q, k, v, d_o = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    w = (0.05 * torch.randn(d, d, device="cuda")).requires_grad_()
    bias = (0.05 * torch.randn(d, device="cuda")).requires_grad_()
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.shape} {shape} bf16, topk {topk}, "
        f"{bq}/{bk}; CUDA time per call, mean of {args.calls} calls (torch.profiler)\n"
    )
    for variant in args.variants.split(","):
        kls = [float(x) for x in args.negligible.split(",")] if variant == "complement" else [None]
        for kl in kls:
            opts = dict(topk=topk, block_q=bq, block_k=bk, variant=variant)
            if kl:
                opts["negligible"] = kl

            def forward(opts=opts):
                with torch.no_grad():
                    return sla.sparse_linear_attention(q, k, v, proj_weight=w, proj_bias=bias, **opts)

            def step(opts=opts):
                o = sla.sparse_linear_attention(q, k, v, proj_weight=w, proj_bias=bias, **opts)
                return torch.autograd.grad(o, (q, k, v, w, bias), d_o)

            for what, fn in (("inference forward", forward), ("training step", step)):
                rows, total = kernel_table(fn, args.calls)
                print(f"### {variant}{'' if kl is None else f' k_l {kl}'}, {what}: {total / 1000:.3f} ms of kernels\n")
                print("| kernel | us/call | launches/call | share |\n|---|---|---|---|")
                for name, us, n in rows:
                    print(f"| {short(name)} | {us:.1f} | {n:g} | {100 * us / total:.1f}% |")
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
