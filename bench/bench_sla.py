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

--negligible k_l,... runs every complement-variant case at each fraction k_l of negligible key blocks (skipped
entirely; docs/SPEC.md); the global variant has none and runs once. k_l does not change the counted FLOPs.

--smoke runs the same code paths on the CPU (deterministic in CI, no GPU needed) on tiny shapes with 1 warm-up and
3 timed runs: the cases, both variants, forward and forward+backward, the --negligible fractions, the adaptive rules
and the 3D tiles (all of them unless --rules or --tiles is given), dense attention through torch SDPA on the CPU
instead of cuDNN, times by time.perf_counter around synchronous calls. Its numbers only show that the script works.

Usage:
    python3 bench/bench_sla.py --quick                 # W1 only, both variants
    python3 bench/bench_sla.py                         # W1-W4, the topk sweep and 64/64 blocks at W1
    python3 bench/bench_sla.py --shapes W1,W4 --variants global --json out.json
    python3 bench/bench_sla.py --shapes W1 --no-sweep --variants complement --negligible 0,0.2   # k_l 0 vs 0.2
    python3 bench/bench_sla.py --rules --tiles          # W1 only: adaptive block-map rules and the 3D token order
    python3 bench/bench_sla.py --cudnn-only --shapes W1    # the cuDNN baseline alone (needs only torch)
    python3 bench/bench_sla.py --smoke --negligible 0,0.2 --json out.json   # CPU check of the script (seconds)
Prints progress to stderr and a markdown table (GPU name and date included) ready for docs/PERF.md to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# bench/timing.py beside this script, also when a test loads the script by its path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

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
# --smoke: tiny shapes with the same code paths (S2 has a ragged last block), runnable on the CPU in seconds.
SMOKE_SHAPES = {
    "S1": ("tiny", 1, 2, 512, 64, 0.25, 128, 64),
    "S2": ("tiny, ragged", 1, 2, 320, 64, 0.25, 128, 64),
}
DEFAULT_SHAPES = ",".join(SHAPES)
TOPK_SWEEP = (0.05, 0.1, 0.2, 0.5)
L2_ROTATION_BYTES = 1 << 30  # rotate input sets until at least this much memory is cycled through
# The shape of the topk sweep and of --rules / --tiles, with its video grid (t, h, w) of L tokens.
SWEEP_SHAPE = {"gpu": "W1", "smoke": "S1"}
TILE_GRID = {"W1": (21, 30, 52), "S1": (4, 8, 16)}
NEGLIGIBLE_SLACK = 1e-9  # as the library's check of negligible <= 1 - topk: 0.8 + 0.2 is not > 1

# cuda for the benchmark, cpu under --smoke (main sets it before anything is allocated).
DEVICE = "cuda"


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
    negligible: Optional[float] = None  # k_l of the complement variant; None for the global variant (it has none)

    @property
    def label(self) -> str:
        kl = "" if self.negligible is None else f" k_l={self.negligible}"
        return f"{self.shape} {self.variant} topk={self.topk}{kl} {self.block_q}/{self.block_k}"

    def options(self) -> dict:
        """The keyword arguments of sla.block_map and sla.sparse_linear_attention for this case."""
        opts = dict(topk=self.topk, block_q=self.block_q, block_k=self.block_k, variant=self.variant)
        if self.negligible is not None:
            opts["negligible"] = self.negligible
        return opts


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


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def dense_name() -> str:
    """The dense baseline in column names and logs."""
    return "cuDNN" if DEVICE == "cuda" else "SDPA-CPU"


def baseline(where: str) -> str:
    """The dense baseline in the header line."""
    if DEVICE == "cuda":
        return f"cuDNN SDPA on {where}"
    return f"torch SDPA on {where} (--smoke: not cuDNN; the times only show that the script runs)"


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "the CPU"


def timing_name() -> str:
    return "CUDA-event timings" if DEVICE == "cuda" else "time.perf_counter timings"


def time_ms(fn: Callable[[int], object], num_sets: int, iters: int, warmup: int) -> float:
    """Median time of fn(i) in milliseconds, events around each call, input set i % num_sets."""
    for i in range(warmup):
        fn(i % num_sets)
    timing.synchronize(DEVICE)
    starts = [timing.Event(DEVICE) for _ in range(iters)]
    ends = [timing.Event(DEVICE) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(i % num_sets)
        ends[i].record()
    timing.synchronize(DEVICE)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def input_sets(case: Case, dtype: torch.dtype, count: Optional[int] = None) -> list[tuple[torch.Tensor, ...]]:
    """Random (q, k, v, dO) sets; q, k, v require grad. By default enough sets to cycle L2_ROTATION_BYTES."""
    shape = (case.b, case.h, case.length, case.d)
    bytes_per_set = 4 * math.prod(shape) * torch.finfo(dtype).bits // 8
    if count is None:
        count = max(2, min(8, math.ceil(L2_ROTATION_BYTES / bytes_per_set)))
        if DEVICE != "cuda":
            count = 2  # no L2 to defeat on the CPU smoke; two sets still exercise the rotation
    sets = []
    for _ in range(count):
        q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype).requires_grad_() for _ in range(3))
        sets.append((q, k, v, torch.randn(shape, device=DEVICE, dtype=dtype)))
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
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    w = (0.05 * torch.randn(d, d, device=DEVICE, generator=gen)).requires_grad_()
    bias = (0.05 * torch.randn(d, device=DEVICE, generator=gen)).requires_grad_()
    opts = case.options()

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
    negl = f", Tn = {bmap.negl_lut.shape[3]}" if case.negligible is not None else ""
    log(f"  {case.label}: T = {bmap.real_topk}{negl} of Nk = {bmap.k_blocks}, {n} input sets")
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

    if not args.no_backward and DEVICE == "cuda":
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
    """The dense baseline: cuDNN SDPA on the GPU; under --smoke torch's default SDPA on the CPU (not cuDNN)."""
    n = len(sets)

    def backend():
        return sdpa_kernel(SDPBackend.CUDNN_ATTENTION) if DEVICE == "cuda" else contextlib.nullcontext()

    def forward(i):
        q, k, v, _ = sets[i]
        with torch.no_grad(), backend():
            return F.scaled_dot_product_attention(q, k, v)

    def forward_backward(i):
        q, k, v, d_o = sets[i]
        with backend():
            o = F.scaled_dot_product_attention(q, k, v)
        return torch.autograd.grad(o, (q, k, v), d_o)

    fwd = time_ms(forward, n, args.iters, args.warmup)
    log(f"    {dense_name()} forward {fwd:.3f} ms")
    fwdbwd = None
    if not args.no_backward:
        fwdbwd = time_ms(forward_backward, n, args.iters, args.warmup)
        log(f"    {dense_name()} forward+backward {fwdbwd:.3f} ms")
    return fwd, fwdbwd


def bench_rules_and_tiles(args, rules: bool, tiles: bool) -> tuple[str, list[dict]]:
    """The sweep shape (W1: Wan2.1-1.3B 480p, grid 21 x 30 x 52): the block map and the layer's forward under each
    rule (docs/BLOCK_MAP.md) with its mean density, and the cost of the 3D token order (the gathers of q, k, v into
    4x4x4 tiles and of O back) next to the layer's forward. Returns the markdown table and its rows."""
    sid = SWEEP_SHAPE[args.mode]
    _, b, h, length, d, topk, bq, bk = args.shape_table[sid]
    grid = TILE_GRID[sid]
    k_blocks = math.ceil(length / bk)
    case = Case(sid, b, h, length, d, topk, bq, bk, "global")
    sets = input_sets(case, torch.bfloat16, count=2)
    n = len(sets)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    w = 0.05 * torch.randn(d, d, device=DEVICE, generator=gen)
    bias = 0.05 * torch.randn(d, device=DEVICE, generator=gen)
    lines = [
        f"{sid} block-map rules and 3D tiles on {device_name()}{'' if DEVICE == 'cuda' else ' (--smoke)'}, "
        f"{datetime.date.today().isoformat()}; median of {timing_name()}.",
        "",
        "| what | ms | mean density |",
        "|---|---|---|",
    ]
    rows = []

    def add(what: str, ms: Optional[float], density: Optional[float] = None, error: Optional[str] = None) -> None:
        shown = f"error: {error}" if error else fmt(ms, 3)
        lines.append(f"| {what} | {shown} | {fmt(density, 4)} |")
        rows.append({"what": what, "ms": ms, "mean_density": density, "error": error})

    if rules:
        max_blocks = min(64, k_blocks)  # the top_p rules' cap (its LUT width): 64 at W1, all blocks at S1
        per_head = [i / max(h - 1, 1) for i in range(h)]  # 0 .. 1 over the heads
        rule_table = {
            f"topk {topk}": ("global", sla.BlockRule.make(topk=topk)),
            "per-head topk 0.02..0.1": ("global", sla.BlockRule.make(topk=[0.02 + 0.08 * x for x in per_head])),
            f"top_p 0.9, max {max_blocks}": ("global", sla.BlockRule.make(top_p=0.9, max_blocks=max_blocks)),
            f"per-head top_p 0.5..0.99, max {max_blocks}": (
                "global",
                sla.BlockRule.make(top_p=[0.5 + 0.49 * x for x in per_head], max_blocks=max_blocks),
            ),
            f"complement, topk {topk}, negligible threshold 1e-3 (max 0.5)": (
                "complement",
                sla.BlockRule.make(topk=topk, negligible_threshold=1e-3, max_negligible=0.5),
            ),
        }
        for name, (variant, rule) in rule_table.items():

            def run_map(i, rule=rule, variant=variant):
                q, k, _, _ = sets[i]
                return sla.block_map(q, k, block_q=bq, block_k=bk, variant=variant, rule=rule, with_inverse=False)

            def run_forward(i, rule=rule, variant=variant):
                q, k, v, _ = sets[i]
                with torch.no_grad():
                    return sla.sparse_linear_attention(
                        q, k, v, block_q=bq, block_k=bk, variant=variant, rule=rule, proj_weight=w, proj_bias=bias
                    )

            try:
                ms = time_ms(run_map, n, args.iters, args.warmup)
                dens = run_map(0).mean_density
                fwd = time_ms(run_forward, n, args.iters, args.warmup)
            except (RuntimeError, ValueError, NotImplementedError) as e:  # one rule failing keeps the others
                message = str(e).splitlines()[0][:160]
                log(f"  {name}: failed: {message}")
                add(f"block map and layer forward, {name}", None, error=message)
                continue
            log(f"  {name}: block map {ms:.3f} ms, layer forward {fwd:.3f} ms, mean density {dens:.4f}")
            add(f"block map, {name}", ms, dens)
            add(f"layer forward (map included, W and b), {name}", fwd, dens)
    if tiles:

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
        add("4x4x4 tiles: to_tiles(q, k, v) + from_tiles(o)", g)
        add(f"forward, raster order (topk {topk})", f0)
        add(f"forward with tiling and untiling (topk {topk})", f1)
    return "\n".join(lines), rows


def parse_negligible(text: str) -> list[float]:
    values = []
    for item in text.split(","):
        try:
            x = float(item)
        except ValueError:
            raise SystemExit(f"--negligible: expected comma-separated fractions in [0, 1), got {item!r}") from None
        if not (math.isfinite(x) and 0.0 <= x < 1.0):
            raise SystemExit(f"--negligible: expected fractions in [0, 1), got {item!r}")
        if x not in values:
            values.append(x)
    return values


def cases_from_args(args) -> list[Case]:
    table = args.shape_table
    sweep_shape = SWEEP_SHAPE[args.mode]
    if args.quick:
        shapes = [sweep_shape]
    elif args.shapes is None:
        shapes = list(table)
    else:
        shapes = args.shapes.split(",")
    variants = args.variants.split(",")
    fractions = parse_negligible(args.negligible)
    if "global" in variants and any(x != 0.0 for x in fractions):
        log("--negligible: the global variant has no negligible blocks; its cases run once (k_l '-')")
    base = []
    for sid in shapes:
        if sid not in table:
            raise SystemExit(f"--shapes: unknown shape {sid!r}; expected some of {', '.join(table)}")
        _, b, h, length, d, topk, bq, bk = table[sid]
        for variant in variants:
            base.append(Case(sid, b, h, length, d, topk, bq, bk, variant))
            if sid == sweep_shape and not args.quick and not args.no_sweep:
                base += [Case(sid, b, h, length, d, t, bq, bk, variant) for t in TOPK_SWEEP if t != topk]
                base.append(Case(sid, b, h, length, d, topk, 64, 64, variant))
    cases = []
    for c in base:
        if c.variant != "complement":
            cases.append(c)
            continue
        for kl in fractions:  # adjacent rows: the same case at each k_l
            if c.topk + kl > 1.0 + NEGLIGIBLE_SLACK:
                raise SystemExit(
                    f"--negligible: k_l = {kl} with topk = {c.topk} ({c.shape}) gives topk + k_l = {c.topk + kl:g} "
                    "> 1; expected topk + k_l <= 1 (critical and negligible blocks are disjoint)"
                )
            cases.append(dataclasses.replace(c, negligible=kl))
    return cases


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tflops(flops: float, ms: Optional[float]) -> Optional[float]:
    return None if ms is None else flops / (ms * 1e-3) / 1e12


def ratio(base: Optional[float], ours: Optional[float]) -> Optional[float]:
    return None if base is None or ours is None else base / ours


def markdown(results: list[Result], gpu: str) -> str:
    dense = dense_name()
    lines = [
        f"SLA layer (block map + forward [+ backward], bf16) vs {baseline(gpu)}, "
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}; median of {timing_name()}.",
        "",
        f"| shape | B, H, L, D | variant | topk | k_l | bq/bk | map ms | fwd ms | fwd+bwd ms | {dense} fwd ms | "
        f"{dense} fwd+bwd ms | fwd ratio | fwd+bwd ratio | fwd eff / exec TFLOPS | fwd+bwd eff / exec TFLOPS | "
        "peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.case
        dims = f"{c.b}, {c.h}, {c.length}, {c.d}"
        kl = "-" if c.negligible is None else f"{c.negligible:g}"
        head = f"| {c.shape} | {dims} | {c.variant} | {c.topk} | {kl} | {c.block_q}/{c.block_k} |"
        if r.error:
            lines.append(f"{head} error: {r.error} |" + " |" * 9)
            continue
        fwd_eff, fwd_exec = tflops(r.dense_flops, r.fwd_ms), tflops(r.executed_fwd_flops, r.fwd_ms)
        fb_eff = tflops(3.5 * r.dense_flops, r.fwdbwd_ms)
        fb_exec = tflops(r.executed_fwdbwd_flops, r.fwdbwd_ms)
        lines.append(
            f"{head} {fmt(r.map_ms, 3)} | "
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
    """The dense baseline alone, one line per number, on the shapes of --shapes (default here: the first)."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        log("bench_sla --cudnn-only: needs a CUDA device")
        return 2
    gpu = device_name()
    table = args.shape_table
    shapes = [SWEEP_SHAPE[args.mode]] if args.quick or args.shapes is None else args.shapes.split(",")
    for sid in shapes:
        if sid not in table:
            raise SystemExit(f"--shapes: unknown shape {sid!r}; expected some of {', '.join(table)}")
        _, b, h, length, d, topk, bq, bk = table[sid]
        sets = input_sets(Case(sid, b, h, length, d, topk, bq, bk, "global"), torch.bfloat16)
        fwd, step = bench_cudnn(sets, args)
        print(f"CUDNN_FWD_MS {fwd:.4f} {sid} on {gpu}")
        if step is not None:
            print(f"CUDNN_STEP_MS {step:.4f} {sid} (forward + backward) on {gpu}")
        del sets
        empty_cache()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="W1 only (both variants unless --variants)")
    parser.add_argument("--shapes", default=None, help=f"comma-separated shape ids (default: all, {DEFAULT_SHAPES})")
    parser.add_argument("--variants", default="global,complement", help="comma-separated variants")
    parser.add_argument(
        "--negligible",
        default="0",
        metavar="LIST",
        help="comma-separated fractions k_l of negligible key blocks; each complement-variant case runs at each "
        "(topk + k_l <= 1); the global variant ignores it (default: 0)",
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the topk sweep and 64/64 blocks at W1")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per measurement (>= 20; default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (default 5)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="only time the block map and the layer's forward under the adaptive rules at W1 (docs/BLOCK_MAP.md)",
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
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"check the script on the CPU: tiny shapes ({', '.join(SMOKE_SHAPES)}), 1 warm-up, 3 timed runs, "
        "torch SDPA instead of cuDNN, the cases and (unless --rules/--tiles) the rules and tiles too",
    )
    args = parser.parse_args(argv)
    if args.json and sla is not None:  # before the timing: a report that cannot be written fails now
        try:
            sla.atomic.check_output_path("--json", args.json)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    if args.smoke:
        DEVICE, args.mode, args.shape_table = "cpu", "smoke", SMOKE_SHAPES
        args.iters = 3 if args.iters is None else args.iters
        args.warmup = 1 if args.warmup is None else args.warmup
        if args.iters < 1:
            parser.error(f"--iters: expected >= 1, got {args.iters}")
    else:
        DEVICE, args.mode, args.shape_table = "cuda", "gpu", SHAPES
        args.iters = 30 if args.iters is None else args.iters
        args.warmup = 5 if args.warmup is None else args.warmup
        if args.iters < 20:
            parser.error(f"--iters: expected >= 20 (docs/PERF.md protocol), got {args.iters}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected >= 0, got {args.warmup}")
    if args.cudnn_only:
        return cudnn_only(args)
    # The GPU runs either the cases or the rules/tiles tables; --smoke runs all of them unless told which.
    only_tables = args.rules or args.tiles
    cases = [] if only_tables else cases_from_args(args)  # checks --shapes and --negligible before any device work
    if sla is None:
        log("bench_sla: the sla package is not installed (pip install --no-build-isolation .)")
        return 2
    if DEVICE == "cuda" and (not torch.cuda.is_available() or not sla.cuda_available()):
        log(f"bench_sla: needs a CUDA device and the CUDA backend ({sla.build_info()}); --smoke runs on the CPU")
        return 2

    gpu = device_name()
    log(f"bench_sla on {gpu}: {sla.build_info()}")
    results, tables = [], []
    if not only_tables:
        baseline_cache = {}
        for case in cases:
            log(f"{case.label}: B={case.b} H={case.h} L={case.length} D={case.d}")
            try:
                results.append(bench_case(case, args, baseline_cache))
            except (RuntimeError, ValueError, NotImplementedError) as e:  # OOM is a RuntimeError too
                message = str(e).splitlines()[0][:160]
                log(f"    failed: {message}")
                results.append(Result(case, error=message))
            empty_cache()
        print(markdown(results, gpu))
    if only_tables or args.smoke:
        rules, tiles = (args.rules, args.tiles) if only_tables else (True, True)
        table, tables = bench_rules_and_tiles(args, rules, tiles)
        if not only_tables:
            print()
        print(table)
    if args.json:
        report = {
            "gpu": gpu,
            "dense": baseline(gpu),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "torch": torch.__version__,
            "sla": sla.build_info(),
            "iters": args.iters,
            "warmup": args.warmup,
            "results": [json_row(r) for r in results],
            "rules_and_tiles": tables,
        }
        sla.atomic.write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
