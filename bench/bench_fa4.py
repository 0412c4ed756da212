#!/usr/bin/env python3
"""FlashAttention-4 beside the SLA layer and cuDNN, on the same GPU in the same process (docs/PERF.md protocol):

- dense: FA4's forward and forward+backward against cuDNN SDPA (the fastest dense attention on Hopper here);
- block-sparse: FA4's forward given *this project's* block map (`sla.block_map(..., layout="BLHD")`, every selected
  block as an FA4 "full" block, no partial blocks) against the SLA layer's forward on the same map with the
  projection at zero (so O = O_s: the same sparse branch; the layer's time includes its linear-branch state pass).
  The max difference of the two outputs is printed (bf16 rounding expected).

FA4 is `flash-attn-4` on PyPI (CuTe DSL). Without network, install its wheels with `pip install --no-deps --target
DIR` (flash-attn-4, nvidia-cutlass-dsl and its -libs-base, -libs-core, -libs-cu13, apache-tvm-ffi,
torch-c-dlpack-ext, quack-kernels, einops) and put both DIR and DIR/nvidia_cutlass_dsl/dsl_packages on PYTHONPATH
(the package's .pth file is not read from PYTHONPATH). The -libs-cu13 wheel (92 MB) is over the device tool's 64 MiB
carry: split it (`split -b 46M`) and carry the parts in two calls on a warm machine (the first copies its part to
/tmp), then `cat` them back into the wheel's file name before installing.

Usage:
    python3 bench/bench_fa4.py                                  # W1, topk 0.05, 0.1, 0.2, blocks 128/64
    python3 bench/bench_fa4.py --shape W3 --topk 0.1 --block-k 128
Prints a markdown table (GPU, versions, date) to stdout. Needs a CUDA GPU with FA4 (Hopper or Blackwell).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sla import SHAPES, time_ms  # noqa: E402

import sla  # noqa: E402


def fa4_block_sparse_tensors(bmap, block_sparsity_module):
    """FA4's BlockSparseTensorsTorch for the critical blocks of `bmap` (a sla.BlockMap): per (b, h, query block)
    `count` full blocks, listed left-packed in a table padded to Nk; no partial ("mask") blocks."""
    b, h, nq, t = bmap.lut.shape
    nk = bmap.k_blocks
    full_idx = torch.zeros((b, h, nq, nk), dtype=torch.int32, device=bmap.lut.device)
    full_idx[..., :t] = bmap.lut.clamp(min=0)  # entries past a row's count are -1 and never read
    zeros_cnt = torch.zeros((b, h, nq), dtype=torch.int32, device=bmap.lut.device)
    zeros_idx = torch.zeros((b, h, nq, nk), dtype=torch.int32, device=bmap.lut.device)
    return block_sparsity_module.BlockSparseTensorsTorch(
        mask_block_cnt=zeros_cnt,
        mask_block_idx=zeros_idx,
        full_block_cnt=bmap.count.to(torch.int32).contiguous(),
        full_block_idx=full_idx,
        block_size=(bmap.block_q, bmap.block_k),
    )


def first(x):
    return x[0] if isinstance(x, tuple) else x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="W1", choices=sorted(SHAPES))
    p.add_argument("--topk", default="0.05,0.1,0.2", help="comma-separated topk values of the block-sparse rows")
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-k", type=int, default=64)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-backward", action="store_true", help="skip the dense forward+backward")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fa4.py needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        from flash_attn.cute import block_sparsity
        from flash_attn.cute.interface import flash_attn_func
    except ImportError as e:
        print(f"bench_fa4.py needs FlashAttention-4 (flash-attn-4; see the docstring): {e}", file=sys.stderr)
        return 2
    _, b, h, length, d, _, _, _ = SHAPES[args.shape]
    torch.manual_seed(0)
    sets = []
    for _ in range(2):
        q, k, v, d_o = (torch.randn((b, length, h, d), device="cuda", dtype=torch.bfloat16) for _ in range(4))
        sets.append((q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), d_o))
    n = len(sets)
    dense_flops = 4.0 * b * h * length * length * d

    def cudnn_fwd(i):
        q, k, v, _ = sets[i]
        with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    def cudnn_fwdbwd(i):
        q, k, v, d_o = sets[i]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return torch.autograd.grad(o, (q, k, v), d_o.transpose(1, 2))

    def fa4_fwd(i):
        q, k, v, _ = sets[i]
        with torch.no_grad():
            return first(flash_attn_func(q, k, v))

    def fa4_fwdbwd(i):
        q, k, v, d_o = sets[i]
        o = first(flash_attn_func(q, k, v))
        return torch.autograd.grad(o, (q, k, v), d_o)

    rows = []
    t_cudnn = time_ms(cudnn_fwd, n, args.iters, args.warmup)
    t_fa4 = time_ms(fa4_fwd, n, args.iters, args.warmup)
    rows.append(("dense forward", t_cudnn, t_fa4, dense_flops))
    if not args.no_backward:
        t_cudnn_b = time_ms(cudnn_fwdbwd, n, args.iters, args.warmup)
        t_fa4_b = time_ms(fa4_fwdbwd, n, args.iters, args.warmup)
        rows.append(("dense forward+backward", t_cudnn_b, t_fa4_b, 3.5 * dense_flops))

    print(
        f"FlashAttention-4 vs cuDNN vs SLA on {torch.cuda.get_device_name()}, {datetime.date.today()}, torch "
        f"{torch.__version__}; {args.shape} (B {b}, H {h}, L {length}, D {d}) bf16 BLHD; median of CUDA-event "
        "timings.\n"
    )
    print("| what | cuDNN ms | FA4 ms | FA4 TFLOPS | FA4 / cuDNN speed-up |\n|---|---|---|---|---|")
    for what, tc, tf, flops in rows:
        print(f"| {what} | {tc:.2f} | {tf:.2f} | {flops / tf / 1e9:.0f} | {tc / tf:.2f}x |")
    print()

    w = torch.zeros(d, d, device="cuda")  # the projection at zero: the layer's output is its sparse branch
    print(
        "| topk | blocks | T | FA4 block-sparse ms (exec TFLOPS) | SLA layer, same map, W = 0 ms (exec TFLOPS) | "
        "FA4 faster by | max abs diff |\n|---|---|---|---|---|---|---|"
    )
    for topk in (float(x) for x in args.topk.split(",")):
        q0, k0 = sets[0][0], sets[0][1]
        bmap = sla.block_map(
            q0, k0, topk=topk, block_q=args.block_q, block_k=args.block_k, layout="BLHD", with_inverse=False
        )
        bst = fa4_block_sparse_tensors(bmap, block_sparsity)
        keys = bmap.count.double().mean().item() * args.block_k
        flops = 4.0 * b * h * length * min(keys, length) * d

        def fa4_sparse(i, bst=bst):
            q, k, v, _ = sets[i]
            with torch.no_grad():
                return first(flash_attn_func(q, k, v, block_sparse_tensors=bst))

        def sla_sparse(i, bmap=bmap):
            q, k, v, _ = sets[i]
            with torch.no_grad():
                return sla.sparse_linear_attention(q, k, v, proj_weight=w, block_map=bmap, layout="BLHD")

        diff = (fa4_sparse(0).float() - sla_sparse(0).float()).abs().max().item()
        t_f = time_ms(fa4_sparse, 1, args.iters, args.warmup)  # the map belongs to set 0
        t_s = time_ms(sla_sparse, 1, args.iters, args.warmup)
        print(
            f"| {topk} | {args.block_q} x {args.block_k} | {bmap.real_topk} | {t_f:.3f} ({flops / t_f / 1e9:.0f}) | "
            f"{t_s:.3f} ({flops / t_s / 1e9:.0f}) | {t_s / t_f:.2f}x | {diff:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
