#!/usr/bin/env python3
"""End-to-end benchmark of SLA in diffusers' WanTransformer3DModel: one denoising forward of Wan2.1-1.3B at
480p x 81 frames (32760 tokens) and Wan2.1-14B at 720p x 81 frames (75600 tokens), dense (diffusers' cuDNN SDPA
backend, "_native_cudnn") against SLA (sla.diffusers.enable_sla: topk 0.05 for 1.3B, 0.1 for 14B, 128 x 64
blocks), in eager mode and with torch.compile, plus one training step (forward + backward, gradient
checkpointing, bf16 autocast over fp32 weights) of the 1.3B model.

The models are built from the published configurations with random weights (no download; the time of a step does
not depend on the weights), in bf16 with diffusers' fp32 modules (norms, time embedder, modulation tables) kept in
fp32 as from_pretrained(torch_dtype=bf16) does. The 14B runs forward only under no_grad (28 GB of weights).

Method (docs/PERF.md): CUDA events, warm-up first, the median of the timed runs; peak memory is
torch.cuda.max_memory_allocated over the timed runs. The attention share is the time of the self-attention calls
(CUDA events around every attention call: diffusers' dispatch_attention_fn for dense, the processor's
local_attention for SLA) over the time of the same eager forward pass; the median over a few such passes.

Usage and device time on one H200 (estimates; compile times dominate):
    python3 bench/bench_dit.py --models 1.3B --modes eager,compile --train    # ~4 min
    python3 bench/bench_dit.py --models 14B --modes eager                     # ~3 min
    python3 bench/bench_dit.py --models 14B --modes compile                   # ~4 min
    python3 bench/bench_dit.py --models 1.3B --modes eager --iters 3 --json out.json   # ~1 min
--compile-scope blocks (default) compiles each transformer block (diffusers' compile_repeated_blocks, fullgraph);
--compile-scope model compiles the whole transformer with fullgraph=True (slower to compile).
--tile T,H,W also times SLA with the model-level 3D token order (enable_sla(tile=...): the tokens permuted once after
the patch embedding and back once before the output head) beside raster order, in every forward mode:
    python3 bench/bench_dit.py --models 1.3B --modes eager,compile --tile 4,4,4    # ~5 min
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time

import torch

# bench/timing.py beside this script, also when a test loads the script by its path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

# The benchmark shapes of the published Wan2.1 configurations (sla.diffusers.wan_config): latent (C, F, H, W) after
# the VAE (8x spatial, 4x temporal), SLA topk.
MODELS = {
    "1.3B": dict(latents=(16, 21, 60, 104), what="480p x 81 frames", topk=0.05),
    "14B": dict(latents=(16, 21, 90, 160), what="720p x 81 frames", topk=0.1),
    # --smoke: the tiny configuration with the same code paths, runnable on the CPU (what the CPU test runs).
    "smoke": dict(config="tiny", latents=(4, 3, 16, 16), what="tiny", topk=0.5, text=(8, 32)),
}
TEXT_TOKENS, TEXT_DIM = 512, 4096  # umT5 context of Wan2.1
BLOCK_Q, BLOCK_K = 128, 64
DEVICE = "cuda"
DENSE_BACKEND = "_native_cudnn"
# Per-model default (warm-up, timed runs, attention-timing passes): the 14B forward takes seconds.
DEFAULT_RUNS = {"1.3B": (2, 5, 2), "14B": (1, 3, 1), "smoke": (1, 2, 1)}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def tokens_of(latents, patch=(1, 2, 2)):
    _, f, h, w = latents
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def build_model(name: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from sla.diffusers import wan_config

    cfg = wan_config(MODELS[name].get("config", name))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init directly in the target dtype, on the GPU: no 2x fp32 copy
    try:
        with torch.device(DEVICE):
            model = WanTransformer3DModel(**cfg)
    finally:
        torch.set_default_dtype(previous)
    keep = set(model._keep_in_fp32_modules or [])
    for param_name, param in model.named_parameters():
        if keep & set(param_name.split(".")):
            param.data = param.data.float()  # parameters only: RoPE's float64 tables stay as built
    model.requires_grad_(False)
    return model.eval()


def make_inputs(name: str, dtype: torch.dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    latents = torch.randn((1, *MODELS[name]["latents"]), generator=g, device=DEVICE).to(dtype)
    tokens, dim = MODELS[name].get("text", (TEXT_TOKENS, TEXT_DIM))
    text = torch.randn((1, tokens, dim), generator=g, device=DEVICE).to(dtype)
    return latents, torch.tensor([700.0], device=DEVICE), text


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def time_runs(fn, warmup: int, iters: int):
    """Median milliseconds of fn() over `iters` runs after `warmup` runs, by CUDA events; and peak memory."""
    for _ in range(warmup):
        fn()
    timing.synchronize(DEVICE)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = timing.Event(DEVICE), timing.Event(DEVICE)
        start.record()
        fn()
        end.record()
        timing.synchronize(DEVICE)
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak_gib()


@contextlib.contextmanager
def attention_timer(model, sla_mode: bool):
    """Records CUDA events around every self-attention call (dense: diffusers' dispatch_attention_fn with the
    sequence as keys; SLA: the processor's local_attention). Yields the list of (start, end) events."""
    events = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            start, end = timing.Event(DEVICE), timing.Event(DEVICE)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            events.append((start, end))
            return out

        return wrapper

    if sla_mode:
        import sla.diffusers as sd

        procs = list(sd.sla_processors(model).values())
        for p in procs:
            p.local_attention = timed(p.local_attention)  # instance attribute shadows the method
        try:
            yield events
        finally:
            for p in procs:
                del p.local_attention
    else:
        from diffusers.models.transformers import transformer_wan

        original = transformer_wan.dispatch_attention_fn
        timed_fn = timed(original)

        def dispatch(query, key, value, *args, **kwargs):
            if key.shape[1] == query.shape[1]:  # self-attention; cross-attention has the 512 text tokens as keys
                return timed_fn(query, key, value, *args, **kwargs)
            return original(query, key, value, *args, **kwargs)

        transformer_wan.dispatch_attention_fn = dispatch
        try:
            yield events
        finally:
            transformer_wan.dispatch_attention_fn = original


def attention_pass(model, run, sla_mode: bool):
    """One timed forward pass with the attention calls timed inside it: (attention ms, pass ms). The share is taken
    from the same pass, not from time_runs' median of other passes, so that it stays a fraction when one pass is
    slower than another (a busy CPU, a GPU clock change)."""
    with attention_timer(model, sla_mode) as events:
        start, end = timing.Event(DEVICE), timing.Event(DEVICE)
        start.record()
        run()
        end.record()
        timing.synchronize(DEVICE)
    return sum(s.elapsed_time(e) for s, e in events), start.elapsed_time(end)


def set_attention(model, variant: str, topk: float, tile=None):
    import sla.diffusers as sd

    if variant == "dense":
        sd.disable_sla(model)
    else:
        sd.enable_sla(model, topk=topk, block_q=BLOCK_Q, block_k=BLOCK_K, tile=tile if variant == "sla_tiled" else None)


def compiled(model, scope: str):
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"  # --smoke on the CPU: no C++ build
    if scope == "blocks":
        model.compile_repeated_blocks(fullgraph=True, backend=backend)
        return model
    return torch.compile(model, fullgraph=True, backend=backend)


def uncompile(model):
    # compile_repeated_blocks wraps the blocks in place; drop those wrappers and dynamo's caches.
    for block in model.blocks:
        if getattr(block, "_compiled_call_impl", None) is not None:
            block._compiled_call_impl = None
    torch._dynamo.reset()


def bench_forward(name: str, modes, args, results):
    spec = MODELS[name]
    tokens = tokens_of(spec["latents"])
    log(f"[{name}] building with random weights ({spec['what']}, {tokens} tokens)")
    t0 = time.time()
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = build_model(name, dtype)
    model.set_attention_backend(DENSE_BACKEND)
    inputs = make_inputs(name, dtype)
    warmup, iters, attn_passes = runs_of(name, args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    log(f"[{name}] built in {time.time() - t0:.0f} s; weights {weights:.1f} GiB")
    for mode in modes:
        row = {"model": name, "tokens": tokens, "mode": mode, "topk": spec["topk"], "what": spec["what"]}
        for variant in ("dense", "sla") + (("sla_tiled",) if args.tile else ()):
            set_attention(model, variant, spec["topk"], args.tile)
            target = compiled(model, args.compile_scope) if mode == "compile" else model

            def run():
                with torch.no_grad():
                    return target(*inputs, return_dict=False)[0]

            t0 = time.time()
            with torch.no_grad():
                out = run()
            timing.synchronize(DEVICE)
            if not torch.isfinite(out).all():
                raise RuntimeError(f"[{name} {mode} {variant}] non-finite output")
            log(f"[{name} {mode} {variant}] first call {time.time() - t0:.1f} s")
            ms, peak = time_runs(run, warmup, iters)
            row[f"{variant}_ms"], row[f"{variant}_peak_gib"] = ms, peak
            if mode == "eager":
                passes = [attention_pass(model, run, variant != "dense") for _ in range(attn_passes)]
                row[f"{variant}_attention_ms"] = statistics.median(attn for attn, _ in passes)
                row[f"{variant}_attention_share"] = statistics.median(attn / total for attn, total in passes)
            log(f"[{name} {mode} {variant}] {ms:.1f} ms, peak {peak:.1f} GiB")
            if mode == "compile":
                uncompile(model)
                target = None
        row["speedup"] = row["dense_ms"] / row["sla_ms"]
        if args.tile:
            row["tile"] = list(args.tile)
            row["tiled_over_raster"] = row["sla_tiled_ms"] / row["sla_ms"]
        if mode == "eager":
            row["attention_speedup"] = row["dense_attention_ms"] / row["sla_attention_ms"]
        results.append(row)
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def runs_of(name: str, args):
    warmup, iters, attn_passes = DEFAULT_RUNS[name]
    return (warmup if args.warmup is None else args.warmup), (iters if args.iters is None else args.iters), attn_passes


def bench_train(args, results):
    import sla.diffusers as sd

    name = "1.3B" if DEVICE == "cuda" else "smoke"
    spec = MODELS[name]
    tokens = tokens_of(spec["latents"])
    log(f"[{name} train] building (fp32 weights, bf16 autocast, gradient checkpointing)")
    model = build_model(name, torch.float32).train().requires_grad_(True)
    model.set_attention_backend(DENSE_BACKEND)
    model.enable_gradient_checkpointing()
    latents, timestep, text = make_inputs(name, torch.float32)
    target = torch.randn_like(latents)
    topk = 0.1  # the fine-tuning recipe's topk
    row = {"model": name, "tokens": tokens, "mode": "train", "topk": topk, "what": spec["what"]}
    for variant in ("dense", "sla"):
        set_attention(model, variant, topk)

        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                out = model(latents, timestep, text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
            return loss

        t0 = time.time()
        loss = step()
        timing.synchronize(DEVICE)
        if not torch.isfinite(loss):
            raise RuntimeError(f"[{name} train {variant}] non-finite loss")
        if variant == "sla":
            missing = [n for n, p in model.named_parameters() if ".proj_l." in n and p.grad is None]
            if missing or not sd.sla_processors(model):
                raise RuntimeError(f"[{name} train] projections without gradients: {missing[:3]}")
        log(f"[{name} train {variant}] first step {time.time() - t0:.1f} s")
        warmup, iters, _ = runs_of(name, args)
        ms, peak = time_runs(step, min(warmup, 1), max(2, iters // 2))
        row[f"{variant}_ms"], row[f"{variant}_peak_gib"] = ms, peak
        log(f"[{name} train {variant}] {ms:.1f} ms, peak {peak:.1f} GiB")
    row["speedup"] = row["dense_ms"] / row["sla_ms"]
    results.append(row)
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (--smoke)"


def table(results) -> str:
    lines = [
        f"GPU: {device_name()}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}; dense = diffusers {DENSE_BACKEND}, SLA 128x64 blocks",
        "",
        "| model | tokens | mode | topk | dense ms | SLA ms | speedup | attn share dense | attn share SLA | "
        "attn speedup | peak GiB dense / SLA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        share_d = f"{100 * r['dense_attention_share']:.0f}%" if "dense_attention_share" in r else "-"
        share_s = f"{100 * r['sla_attention_share']:.0f}%" if "sla_attention_share" in r else "-"
        attn_x = f"{r['attention_speedup']:.2f}x" if "attention_speedup" in r else "-"
        lines.append(
            f"| Wan2.1-{r['model']} | {r['tokens']} | {r['mode']} | {r['topk']} | {r['dense_ms']:.1f} | "
            f"{r['sla_ms']:.1f} | {r['speedup']:.2f}x | {share_d} | {share_s} | {attn_x} | "
            f"{r['dense_peak_gib']:.1f} / {r['sla_peak_gib']:.1f} |"
        )
    tiled = [r for r in results if "tiled_over_raster" in r]
    if tiled:
        lines += [
            "",
            "| model | mode | tile | SLA raster ms | SLA tiled ms | tiled / raster |",
            "|---|---|---|---|---|---|",
        ]
        for r in tiled:
            tile = "x".join(str(t) for t in r["tile"])
            lines.append(
                f"| Wan2.1-{r['model']} | {r['mode']} | {tile} | {r['sla_ms']:.1f} | {r['sla_tiled_ms']:.1f} | "
                f"{r['tiled_over_raster']:.3f} |"
            )
    return "\n".join(lines)


def tile_arg(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        tile = tuple(int(p) for p in parts)
    except ValueError:
        tile = ()
    if len(tile) != 3 or min(tile) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers T,H,W (e.g. 4,4,4), got {text!r}")
    return tile


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="1.3B,14B", help="comma-separated: 1.3B, 14B (default both)")
    parser.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    parser.add_argument("--train", action="store_true", help="also time one training step of the 1.3B model")
    parser.add_argument("--train-only", action="store_true", help="only the training step")
    parser.add_argument(
        "--compile-scope",
        choices=("blocks", "model"),
        default="blocks",
        help="blocks: compile_repeated_blocks(fullgraph=True); model: torch.compile(model, fullgraph=True)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 2; 1 for 14B)")
    parser.add_argument("--iters", type=int, default=None, help="timed runs (default 5; 3 for 14B)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model on the CPU through the same code (checks the script; times mean nothing)",
    )
    parser.add_argument(
        "--tile",
        type=tile_arg,
        default=None,
        metavar="T,H,W",
        help="also time SLA with the model-level 3D token order of this tile (e.g. 4,4,4) beside raster order",
    )
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.json:  # before the timing: a report that cannot be written fails now, not after minutes of it
        import sla.atomic

        try:
            sla.atomic.check_output_path("--json", args.json)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))

    global DEVICE, DENSE_BACKEND
    if args.smoke:
        DEVICE, DENSE_BACKEND = "cpu", "native"
        args.models = "smoke"
    elif not torch.cuda.is_available():
        raise SystemExit(
            "bench_dit.py needs a CUDA GPU (torch.cuda.is_available() is False); --smoke runs a tiny "
            "model on the CPU to check the script"
        )
    try:
        import diffusers
    except ImportError as e:
        raise SystemExit("bench_dit.py needs diffusers >= 0.35: pip install 'diffusers>=0.35'") from e
    import sla

    if DEVICE == "cuda" and not sla.cuda_available():
        raise SystemExit(f"the sla package was built without its CUDA backend: {sla.build_info()}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; expected some of {', '.join(MODELS)}")
    for m in modes:
        if m not in ("eager", "compile"):
            raise SystemExit(f"--modes: unknown mode {m!r}; expected eager and/or compile")
    if (args.iters is not None and args.iters < 1) or (args.warmup is not None and args.warmup < 0):
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    log(f"{device_name()}; torch {torch.__version__}; diffusers {diffusers.__version__}; {sla.build_info()}")

    results = []
    start = time.time()
    if not args.train_only:
        for name in models:
            bench_forward(name, modes, args, results)
    if args.train or args.train_only:
        bench_train(args, results)
    log(f"total {time.time() - start:.0f} s")
    print(table(results))
    if args.json:
        report = {
            "gpu": device_name(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "date": datetime.date.today().isoformat(),
            "results": results,
        }
        sla.atomic.write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
