"""The synthetic video-token workload of `sla demo` (src/cli/synthetic_video.cpp) in PyTorch: the same head kinds
(local, spatial, temporal, global, then the same kinds wider), the same construction and constants, drawn from
torch's RNG (so the numbers are not bitwise those of the C++ demo, the structure is)."""

from __future__ import annotations

import math

import torch

PEAK_LOGIT = 14.0  # scaled logit of a query with the key at its own position
QK_NOISE = 0.2  # per-component noise of the structured Q and K, relative to the feature amplitude


def head_spec(h: int) -> tuple[str, float, float]:
    widen = 1.0 + 0.5 * (h // 4)
    return [
        ("local", 0.6 * widen, 1.5 * widen),
        ("spatial", 0.6 * widen, 0.0),
        ("temporal", 0.0, 1.0 * widen),
        ("global", 0.0, 0.0),
    ][h % 4]


def video_workload(grid: tuple[int, int, int], heads: int, dim: int, seed: int = 0):
    """(q, k, v) float32 (1, H, T*H*W, D) in raster order (t, h, w), and the head kind names."""
    t_n, y_n, x_n = grid
    n = t_n * y_n * x_n
    tt, yy, xx = torch.meshgrid(torch.arange(t_n), torch.arange(y_n), torch.arange(x_n), indexing="ij")
    pos = torch.stack([tt.reshape(-1), yy.reshape(-1), xx.reshape(-1)], 1).double()  # (n, 3)
    qs, ks, vs, kinds = [], [], [], []
    for h in range(heads):
        g = torch.Generator().manual_seed(seed * 1000003 + h)
        kind, t_scale, yx_scale = head_spec(h)
        kinds.append(kind)
        if kind == "global":
            q = torch.randn(n, dim, generator=g, dtype=torch.float64)
            k = torch.randn(n, dim, generator=g, dtype=torch.float64)
        else:
            m = dim // 2
            amp = math.sqrt(PEAK_LOGIT * math.sqrt(dim))
            comp = amp / math.sqrt(m)
            noise = QK_NOISE * comp
            w = torch.randn(m, 3, generator=g, dtype=torch.float64)
            w[:, 0] = w[:, 0] / t_scale if t_scale > 0 else 0.0
            w[:, 1:] = w[:, 1:] / yx_scale if yx_scale > 0 else 0.0
            phase = pos @ w.T  # (n, m)
            feat = torch.stack([comp * phase.cos(), comp * phase.sin()], -1).reshape(n, 2 * m)
            q = torch.zeros(n, dim, dtype=torch.float64)
            k = torch.zeros(n, dim, dtype=torch.float64)
            q[:, : 2 * m] = feat + noise * torch.randn(n, 2 * m, generator=g, dtype=torch.float64)
            k[:, : 2 * m] = feat + noise * torch.randn(n, 2 * m, generator=g, dtype=torch.float64)
            if dim > 2 * m:
                q[:, 2 * m :] = noise * torch.randn(n, dim - 2 * m, generator=g, dtype=torch.float64)
                k[:, 2 * m :] = noise * torch.randn(n, dim - 2 * m, generator=g, dtype=torch.float64)
        offset = 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)
        phase0 = 2 * math.pi * torch.rand(dim, generator=g, dtype=torch.float64)
        wv = torch.randn(dim, 3, generator=g, dtype=torch.float64) / 4.0
        v = offset + (pos @ wv.T + phase0).cos() + 0.3 * torch.randn(n, dim, generator=g, dtype=torch.float64)
        qs.append(q)
        ks.append(k)
        vs.append(v)
    stack = lambda xs: torch.stack(xs)[None].float()  # noqa: E731
    return stack(qs), stack(ks), stack(vs), kinds
