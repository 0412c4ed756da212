#!/usr/bin/env python3
"""Quality against density of the block-map rules (docs/BLOCK_MAP.md) on the demo's synthetic video workload, CPU.

For each density level set by a fixed topk, compares at (nearly) the same average density:
  fixed topk | one top_p for all heads (bisected to the density) | calibrated per-head topk | calibrated per-head
  top_p (sla.calibrate with the density as its global budget), each in raster order and with 3D tiles (--tiles).
Calibration runs on the workload drawn with --calib-seed, evaluation on --seed (held out). Measures over all query
rows against dense attention: mass = mean attention mass inside the critical blocks; error = mean over heads of the
RMS over rows of |O_s - O| / |O| (O_s: the sparse branch alone). Prints a markdown table.

    python3 bench/eval_rules.py                          # grid 8x16x24, 6 heads, D 64 (the demo default)
    python3 bench/eval_rules.py --grid 12x16x24 --heads 8 --levels 0.05,0.1,0.2 --tiles 4x4x4
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from video_workload import video_workload  # noqa: E402

import sla  # noqa: E402


def masks(bmap: sla.BlockMap, lq: int, lk: int) -> torch.Tensor:
    """(H, Lq, Lk) bool token mask of the critical blocks (batch 0)."""
    b, h, nq, t = bmap.lut.shape
    nk = bmap.k_blocks
    valid = torch.arange(t)[None, None, :] < bmap.count[0, :, :, None].long()
    blk = torch.zeros(h, nq, nk + 1, dtype=torch.bool)
    blk.scatter_(-1, torch.where(valid, bmap.lut[0].long(), nk), True)
    blk = blk[..., :nk]
    tok = blk.repeat_interleave(bmap.block_q, 1)[:, :lq].repeat_interleave(bmap.block_k, 2)[:, :, :lk]
    return tok


def measure(q, k, v, bmap) -> tuple[float, float, float]:
    """(mean density, mass, error) of a map; q, k, v (1, H, L, D). One head at a time (fp64 L x L)."""
    m = masks(bmap, q.shape[2], k.shape[2])
    masses, errs = [], []
    for h in range(q.shape[1]):
        qd, kd, vd = q[0, h].double(), k[0, h].double(), v[0, h].double()
        p = torch.softmax(qd @ kd.T / math.sqrt(q.shape[-1]), -1)
        pm = p * m[h]
        mass = pm.sum(-1)
        dense = p @ vd
        o_s = (pm @ vd) / mass[:, None]
        masses.append(float(mass.mean()))
        errs.append(float(((o_s - dense).norm(dim=-1) / dense.norm(dim=-1)).square().mean().sqrt()))
    return bmap.mean_density, sum(masses) / len(masses), sum(errs) / len(errs)


def top_p_at_density(q, k, target: float, bq: int, bk: int) -> sla.BlockRule:
    lo, hi = 1e-4, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        d = sla.block_map(q, k, top_p=mid, block_q=bq, block_k=bk, with_inverse=False).mean_density
        lo, hi = (mid, hi) if d < target else (lo, mid)
    return sla.BlockRule.make(top_p=lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="8x16x24")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-seed", type=int, default=1)
    ap.add_argument("--levels", default="0.05,0.1,0.15,0.2,0.3", help="fixed topk values that set the densities")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--tiles", default="4x4x4,1x8x8", help="tile shapes of the 3D token order to evaluate")
    args = ap.parse_args()
    grid = tuple(int(x) for x in args.grid.split("x"))
    bq = bk = args.block
    levels = [float(x) for x in args.levels.split(",")]
    data = {s: video_workload(grid, args.heads, args.dim, s) for s in (args.seed, args.calib_seed)}
    kinds = data[args.seed][3]
    print(
        f"eval_rules: grid {args.grid}, {args.heads} heads ({', '.join(kinds)}), D {args.dim}, blocks {bq}/{bk}; "
        f"calibration seed {args.calib_seed}, evaluation seed {args.seed}",
        file=sys.stderr,
    )

    rows = []
    orders = ["raster"] + [f"tiles {t}" for t in args.tiles.split(",") if t]
    for order in orders:

        def prep(s, order=order):
            q, k, v, _ = data[s]
            if order != "raster":
                tile = tuple(int(x) for x in order.split()[1].split("x"))
                q, k, v = (sla.tiling.to_tiles(t, grid, tile) for t in (q, k, v))
            return q, k, v

        q, k, v = prep(args.seed)
        qc, kc, vc = prep(args.calib_seed)
        for topk in levels:
            fixed = sla.block_map(q, k, topk=topk, block_q=bq, block_k=bk, with_inverse=False)
            d0 = fixed.mean_density
            results = {"fixed topk": measure(q, k, v, fixed)}
            r = top_p_at_density(q, k, d0, bq, bk)
            results[f"top_p {r.top_p:.3f} (all heads)"] = measure(
                q, k, v, sla.block_map(q, k, rule=r, block_q=bq, block_k=bk, with_inverse=False)
            )
            for fam in ("topk", "top_p"):
                cal = sla.calibrate(
                    (qc, kc, vc),
                    target="error",
                    quality=1e-6,
                    rule=fam,
                    budget=d0,
                    block_q=bq,
                    block_k=bk,
                    progress=False,
                    rows_per_head=512,
                )
                rule = cal.rules()[""]
                bm = sla.block_map(q, k, rule=rule, block_q=bq, block_k=bk, with_inverse=False)
                results[f"calibrated per-head {fam}"] = measure(q, k, v, bm)
            for name, (d, mass, err) in results.items():
                rows.append((order, topk, name, d, mass, err))
            base = results["fixed topk"]
            for name, (d, mass, err) in results.items():
                print(
                    f"  {order} topk {topk}: {name}: density {d:.4f} mass {mass:.4f} error {err:.4f}"
                    f" (fixed: {base[1]:.4f} / {base[2]:.4f})",
                    file=sys.stderr,
                )

    print(
        f"Block-map rules on the synthetic video workload (grid {args.grid}, {args.heads} heads, D {args.dim}, "
        f"blocks {bq}/{bk}; calibrated on seed {args.calib_seed}, evaluated on seed {args.seed}): "
        "`python3 bench/eval_rules.py " + " ".join(sys.argv[1:]) + "`"
    )
    print()
    print("| order | level (fixed topk) | rule | mean density | mass in critical blocks | O_s error (RMS rel.) |")
    print("|---|---|---|---|---|---|")
    for order, topk, name, d, mass, err in rows:
        print(f"| {order} | {topk} | {name} | {d:.4f} | {mass:.4f} | {err:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
