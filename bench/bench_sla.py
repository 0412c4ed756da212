#!/usr/bin/env python3
"""Benchmark of the whole SLA layer (block map + forward [+ backward]) through sla.sparse_linear_attention,
against dense cuDNN attention measured in the same process, following the protocol of docs/PERF.md:

- CUDA events around every call, warm-up first, the median of >= 20 timed runs;
- random inputs (never zeros), several input sets rotated so that repeated runs do not measure the L2 cache;
- forward (inference: no saved state, no inverse tables) and forward+backward (backward of a random dO, gradients
  of q, k, v, W and b) timed separately;
- effective TFLOPS = 4*B*H*Lq*Lk*D / time for the forward and 3.5 times that (forward + 2.5x backward) for
  forward+backward, as papers report; executed TFLOPS count the FLOPs the sparse and linear branches really do;
- peak memory of one forward+backward step (torch.cuda.max_memory_allocated, one input set resident).

Usage:
    python3 bench/bench_sla.py --quick                 # W1 only, both variants
    python3 bench/bench_sla.py                         # W1-W4, the topk sweep and 64/64 blocks at W1
    python3 bench/bench_sla.py --shapes W1,W4 --variants global --json out.json
    python3 bench/bench_sla.py --rules --tiles          # W1 only: adaptive block-map rules and the 3D token order
    python3 bench/bench_sla.py --cudnn-only --shapes W1    # the cuDNN baseline alone (needs only torch)
Prints progress to stderr and a markdown table (GPU name and date included) ready for docs/PERF.md to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import statistics
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import sla
except ImportError:  # --cudnn-only runs without the package (the device scripts build only the C++ tests)
    sla = None

# docs/PERF.md shapes: id -> (what, B, H, L, D, topk, block_q, block_k)
SHAPES = {
    "W1": ("Wan2.1-1.3B 480p", 1, 12, 32760, 128, 0.05, 128, 64),
    "W2": ("public SLA benchmark", 2, 16, 32760, 128, 0.05, 128, 64),
    "W3": ("Wan2.1-14B 720p", 1, 40, 75600, 128, 0.10, 128, 64),
    "W4": ("head dim 64", 1, 48, 17550, 64, 0.10, 128, 64),
}
DEFAULT_SHAPES = ",".join(SHAPES)
TOPK_SWEEP = (0.05, 0.1, 0.2, 0.5)
L2_ROTATION_BYTES = 1 << 30  # rotate input sets until at least this much memory is cycled through


@dataclasses.dataclass
class Case:
    shape: str
    b: int
    h: int
    length: int
    d: int
    topk: float
    block_q: int
    block_k: int
    variant: str

    @property
    def label(self) -> str:
        return f"{self.shape} {self.variant} topk={self.topk} {self.block_q}/{self.block_k}"


@dataclasses.dataclass
class Result:
    case: Case
    map_ms: Optional[float] = None
    fwd_ms: Optional[float] = None
    fwdbwd_ms: Optional[float] = None
    cudnn_fwd_ms: Optional[float] = None
    cudnn_fwdbwd_ms: Optional[float] = None
    dense_flops: float = 0.0
    executed_fwd_flops: float = 0.0
    executed_fwdbwd_flops: float = 0.0
    peak_gib: Optional[float] = None
    error: Optional[str] = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_ms(fn: Callable[[int], object], num_sets: int, iters: int, warmup: int) -> float:
    """Median time of fn(i) in milliseconds, CUDA events around each call, input set i % num_sets."""
    for i in range(warmup):
        fn(i % num_sets)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(i % num_sets)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def input_sets(case: Case, dtype: torch.dtype, count: Optional[int] = None) -> list[tuple[torch.Tensor, ...]]:
    """Random (q, k, v, dO) sets; q, k, v require grad. By default enough sets to cycle L2_ROTATION_BYTES."""
    shape = (case.b, case.h, case.length, case.d)
    bytes_per_set = 4 * math.prod(shape) * torch.finfo(dtype).bits // 8
    if count is None:
        count = max(2, min(8, math.ceil(L2_ROTATION_BYTES / bytes_per_set)))
    sets = []
    for _ in range(count):
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype).requires_grad_() for _ in range(3))
        sets.append((q, k, v, torch.randn(shape, device="cuda", dtype=dtype)))
    return sets


def executed_flops(case: Case, real_topk: int) -> tuple[float, float]:
    """FLOPs the layer really does: forward, and forward+backward."""
    b, h, length, d = case.b, case.h, case.length, case.d
    # Attended keys per query row: T blocks of bk keys (a ragged last block counted full: an upper bound).
    keys = min(real_topk * case.block_k, length)
    sparse_fwd = 4.0 * b * h * length * keys * d
    # Linear branch: phi(K)^T V (2 L D^2), phi(Q) H (2 L D^2), the projection (2 L D^2).
    linear_fwd = 6.0 * b * h * length * d * d
    # Backward: 2.5x the sparse forward (FlashAttention convention) and about twice the linear forward.
    return sparse_fwd + linear_fwd, 3.5 * sparse_fwd + 3.0 * linear_fwd


def bench_case(case: Case, args, baseline_cache: dict) -> Result:
    res = Result(case)
    b, h, length, d = case.b, case.h, case.length, case.d
    res.dense_flops = 4.0 * b * h * length * length * d
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = (0.05 * torch.randn(d, d, device="cuda", generator=gen)).requires_grad_()
    bias = (0.05 * torch.randn(d, device="cuda", generator=gen)).requires_grad_()
    opts = dict(topk=case.topk, block_q=case.block_q, block_k=case.block_k, variant=case.variant)

    sets = input_sets(case, dtype)  # the closures below read this list: it is refilled, never rebound
    n = len(sets)

    def block_map(i):
        q, k, _, _ = sets[i]
        return sla.block_map(q, k, with_inverse=False, **opts)

    def forward(i):
        q, k, v, _ = sets[i]
        with torch.no_grad():
            return sla.sparse_linear_attention(q, k, v, proj_weight=w, proj_bias=bias, **opts)

    def forward_backward(i):
        q, k, v, d_o = sets[i]
        o = sla.sparse_linear_attention(q, k, v, proj_weight=w, proj_bias=bias, **opts)
        return torch.autograd.grad(o, (q, k, v, w, bias), d_o)

    bmap = block_map(0)
    res.executed_fwd_flops, res.executed_fwdbwd_flops = executed_flops(case, bmap.real_topk)
    log(f"  {case.label}: T = {bmap.real_topk} of Nk = {bmap.k_blocks}, {n} input sets")
    res.map_ms = time_ms(block_map, n, args.iters, args.warmup)
    res.fwd_ms = time_ms(forward, n, args.iters, args.warmup)
    log(f"    map {res.map_ms:.3f} ms, forward {res.fwd_ms:.3f} ms")
    if not args.no_backward:
        res.fwdbwd_ms = time_ms(forward_backward, n, args.iters, args.warmup)
        log(f"    forward+backward {res.fwdbwd_ms:.3f} ms")

    key = (b, h, length, d)
    if key not in baseline_cache:
        baseline_cache[key] = bench_cudnn(sets, args)
    res.cudnn_fwd_ms, res.cudnn_fwdbwd_ms = baseline_cache[key]

    if not args.no_backward:
        # Peak of one training step with a single input set resident (inputs, W, b and everything the step makes).
        sets.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        sets.extend(input_sets(case, dtype, count=1))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        forward_backward(0)
        torch.cuda.synchronize()
        res.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    return res


def bench_cudnn(sets, args) -> tuple[float, Optional[float]]:
    n = len(sets)

    def forward(i):
        q, k, v, _ = sets[i]
        with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    def forward_backward(i):
        q, k, v, d_o = sets[i]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q, k, v)
        return torch.autograd.grad(o, (q, k, v), d_o)

    fwd = time_ms(forward, n, args.iters, args.warmup)
    log(f"    cuDNN forward {fwd:.3f} ms")
    fwdbwd = None
    if not args.no_backward:
        fwdbwd = time_ms(forward_backward, n, args.iters, args.warmup)
        log(f"    cuDNN forward+backward {fwdbwd:.3f} ms")
    return fwd, fwdbwd


def bench_rules_and_tiles(args) -> str:
    """W1 (Wan2.1-1.3B 480p, grid 21 x 30 x 52): the block map under each rule (docs/BLOCK_MAP.md) with its mean
    density, and the cost of the 3D token order (the gathers of q, k, v into 4x4x4 tiles and of O back) next to the
    layer's forward."""
    _, b, h, length, d, topk, bq, bk = SHAPES["W1"]
    grid = (21, 30, 52)
    case = Case("W1", b, h, length, d, topk, bq, bk, "global")
    sets = input_sets(case, torch.bfloat16, count=2)
    n = len(sets)
    lines = [
        f"W1 block-map rules and 3D tiles on {torch.cuda.get_device_name()}, "
        f"{datetime.date.today().isoformat()}; median of CUDA-event timings.",
        "",
        "| what | ms | mean density |",
        "|---|---|---|",
    ]
    if args.rules:
        rules = {
            "topk 0.05": sla.BlockRule.make(topk=0.05),
            "per-head topk 0.02..0.1": sla.BlockRule.make(topk=[0.02 + 0.08 * i / (h - 1) for i in range(h)]),
            "top_p 0.9, max 64": sla.BlockRule.make(top_p=0.9, max_blocks=64),
            "per-head top_p 0.5..0.99, max 64": sla.BlockRule.make(
                top_p=[0.5 + 0.49 * i / (h - 1) for i in range(h)], max_blocks=64
            ),
        }
        for name, rule in rules.items():

            def run(i, rule=rule):
                q, k, _, _ = sets[i]
                return sla.block_map(q, k, block_q=bq, block_k=bk, rule=rule, with_inverse=False)

            ms = time_ms(run, n, args.iters, args.warmup)
            dens = run(0).mean_density
            log(f"  block map {name}: {ms:.3f} ms, mean density {dens:.4f}")
            lines.append(f"| block map, {name} | {ms:.3f} | {dens:.4f} |")
    if args.tiles:

        def gathers(i):
            q, k, v, _ = sets[i]
            tq, tk, tv = (sla.tiling.to_tiles(t.detach(), grid) for t in (q, k, v))
            return sla.tiling.from_tiles(tv, grid)

        def forward(i, tiled):
            q, k, v, _ = sets[i]
            with torch.no_grad():
                if tiled:
                    q, k, v = (sla.tiling.to_tiles(t, grid) for t in (q, k, v))
                o = sla.sparse_linear_attention(q, k, v, topk=topk, block_q=bq, block_k=bk)
                return sla.tiling.from_tiles(o, grid) if tiled else o

        g = time_ms(gathers, n, args.iters, args.warmup)
        f0 = time_ms(lambda i: forward(i, False), n, args.iters, args.warmup)
        f1 = time_ms(lambda i: forward(i, True), n, args.iters, args.warmup)
        log(f"  tiles: gathers {g:.3f} ms, forward {f0:.3f} ms raster, {f1:.3f} ms tiled")
        lines += [
            f"| 4x4x4 tiles: to_tiles(q, k, v) + from_tiles(o) | {g:.3f} | - |",
            f"| forward, raster order (topk {topk}) | {f0:.3f} | - |",
            f"| forward with tiling and untiling (topk {topk}) | {f1:.3f} | - |",
        ]
    return "\n".join(lines)


def cases_from_args(args) -> list[Case]:
    shapes = ["W1"] if args.quick else args.shapes.split(",")
    variants = args.variants.split(",")
    cases = []
    for sid in shapes:
        if sid not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {sid!r}; expected some of {', '.join(SHAPES)}")
        _, b, h, length, d, topk, bq, bk = SHAPES[sid]
        for variant in variants:
            cases.append(Case(sid, b, h, length, d, topk, bq, bk, variant))
            if sid == "W1" and not args.quick and not args.no_sweep:
                cases += [Case(sid, b, h, length, d, t, bq, bk, variant) for t in TOPK_SWEEP if t != topk]
                cases.append(Case(sid, b, h, length, d, topk, 64, 64, variant))
    return cases


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tflops(flops: float, ms: Optional[float]) -> Optional[float]:
    return None if ms is None else flops / (ms * 1e-3) / 1e12


def ratio(base: Optional[float], ours: Optional[float]) -> Optional[float]:
    return None if base is None or ours is None else base / ours


def markdown(results: list[Result], gpu: str) -> str:
    lines = [
        f"SLA layer (block map + forward [+ backward], bf16) vs cuDNN SDPA on {gpu}, "
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}; median of CUDA-event timings.",
        "",
        "| shape | B, H, L, D | variant | topk | bq/bk | map ms | fwd ms | fwd+bwd ms | cuDNN fwd ms | "
        "cuDNN fwd+bwd ms | fwd ratio | fwd+bwd ratio | fwd eff / exec TFLOPS | fwd+bwd eff / exec TFLOPS | "
        "peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.case
        dims = f"{c.b}, {c.h}, {c.length}, {c.d}"
        if r.error:
            lines.append(
                f"| {c.shape} | {dims} | {c.variant} | {c.topk} | {c.block_q}/{c.block_k} | "
                f"error: {r.error} |" + " |" * 9
            )
            continue
        fwd_eff, fwd_exec = tflops(r.dense_flops, r.fwd_ms), tflops(r.executed_fwd_flops, r.fwd_ms)
        fb_eff = tflops(3.5 * r.dense_flops, r.fwdbwd_ms)
        fb_exec = tflops(r.executed_fwdbwd_flops, r.fwdbwd_ms)
        lines.append(
            f"| {c.shape} | {dims} | {c.variant} | {c.topk} | {c.block_q}/{c.block_k} | {fmt(r.map_ms, 3)} | "
            f"{fmt(r.fwd_ms)} | {fmt(r.fwdbwd_ms)} | {fmt(r.cudnn_fwd_ms)} | {fmt(r.cudnn_fwdbwd_ms)} | "
            f"{fmt(ratio(r.cudnn_fwd_ms, r.fwd_ms), 1)}x | {fmt(ratio(r.cudnn_fwdbwd_ms, r.fwdbwd_ms), 1)}x | "
            f"{fmt(fwd_eff, 0)} / {fmt(fwd_exec, 0)} | {fmt(fb_eff, 0)} / {fmt(fb_exec, 0)} | {fmt(r.peak_gib)} |"
        )
    return "\n".join(lines)


def json_row(r: Result) -> dict:
    row = dataclasses.asdict(r.case)
    row.update({k: v for k, v in dataclasses.asdict(r).items() if k != "case"})
    return row


def cudnn_only(args) -> int:
    """The dense baseline alone, one line per number, on the shapes of --shapes (default here: W1)."""
    if not torch.cuda.is_available():
        log("bench_sla --cudnn-only: needs a CUDA device")
        return 2
    gpu = torch.cuda.get_device_name()
    shapes = ["W1"] if args.quick or args.shapes == DEFAULT_SHAPES else args.shapes.split(",")
    for sid in shapes:
        if sid not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {sid!r}; expected some of {', '.join(SHAPES)}")
        _, b, h, length, d, topk, bq, bk = SHAPES[sid]
        sets = input_sets(Case(sid, b, h, length, d, topk, bq, bk, "global"), torch.bfloat16)
        fwd, step = bench_cudnn(sets, args)
        print(f"CUDNN_FWD_MS {fwd:.4f} {sid} on {gpu}")
        if step is not None:
            print(f"CUDNN_STEP_MS {step:.4f} {sid} (forward + backward) on {gpu}")
        del sets
        torch.cuda.empty_cache()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="W1 only (both variants unless --variants)")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated shape ids (default: all)")
    parser.add_argument("--variants", default="global,complement", help="comma-separated variants")
    parser.add_argument("--no-sweep", action="store_true", help="skip the topk sweep and 64/64 blocks at W1")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--iters", type=int, default=30, help="timed runs per measurement (>= 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="only time the block map under the adaptive rules at W1 (docs/BLOCK_MAP.md)",
    )
    parser.add_argument(
        "--tiles", action="store_true", help="only time the 3D token order (4x4x4 tiles of the 21x30x52 grid) at W1"
    )
    parser.add_argument(
        "--cudnn-only",
        action="store_true",
        help="time only cuDNN (forward, and forward+backward unless --no-backward) on each shape; prints "
        "CUDNN_FWD_MS / CUDNN_STEP_MS lines for the device scripts",
    )
    args = parser.parse_args()
    if args.iters < 20:
        parser.error("--iters: expected >= 20 (docs/PERF.md protocol)")
    if args.cudnn_only:
        return cudnn_only(args)
    if sla is None:
        log("bench_sla: the sla package is not installed (pip install --no-build-isolation .)")
        return 2
    if not torch.cuda.is_available() or not sla.cuda_available():
        log(f"bench_sla: needs a CUDA device and the CUDA backend ({sla.build_info()})")
        return 2

    gpu = torch.cuda.get_device_name()
    log(f"bench_sla on {gpu}: {sla.build_info()}")
    if args.rules or args.tiles:
        print(bench_rules_and_tiles(args))
        return 0
    results, baseline_cache = [], {}
    for case in cases_from_args(args):
        log(f"{case.label}: B={case.b} H={case.h} L={case.length} D={case.d}")
        try:
            results.append(bench_case(case, args, baseline_cache))
        except (RuntimeError, ValueError, NotImplementedError) as e:  # OOM is a RuntimeError too
            message = str(e).splitlines()[0][:160]
            log(f"    failed: {message}")
            results.append(Result(case, error=message))
        torch.cuda.empty_cache()

    table = markdown(results, gpu)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "gpu": gpu,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "torch": torch.__version__,
                    "sla": sla.build_info(),
                    "results": [json_row(r) for r in results],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
