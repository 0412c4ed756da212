#!/usr/bin/env python3
"""A numpy model of the CUDA backward's rounding points on the fuzz case that fails the 2x rule
(test_backend_ops --mode fuzz --seed 17031791371020627165 --case 67: f16, d64, global, relu, Lq 3, Lk 2, one
block, W present, eps 4.71e-5, block offsets 1.60, scale 1/8), against the fp64 oracle and the test's emulation
(tests/common/reference.cpp, reference_backward). Inputs are random draws of the same configuration and scale, not
the case's own. Prints, per variant of the kernel's rounding, the distribution of err / limit for dq and dk over
N draws (argument, default 400; a few seconds).

What it shows (docs/KERNELS_NEXT.md 1.9): the kernel's Delta = dO . O_s, with O_s formed in the forward from the
fp16-rounded p~ (the P V product), is not the sum the backward's dS = P (dP - Delta) cancels against (P
recomputed unrounded): sum_c dS_c = -delta_Delta ~ 2^-11 P |dP| instead of ~0, a common-mode error in dq and dk
that the emulation (Delta = sum P^ dP^ from the same P^) does not have. "delta=sum P dP" (a consistent Delta) and
"no fwd p~ rounding" remove the failures.
"""

import sys

import numpy as np


def f16(x):
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float64)


def f32(x):
    return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def bf16(x):  # round-to-nearest-even to bf16
    a = np.asarray(x, np.float32).copy()
    u = a.view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


def split(x):  # hi + lo bf16 (~16 bits)
    x = f32(x)
    hi = bf16(x)
    return hi + bf16(x - hi)


D, LQ, LK, S, EPS, BLK = 64, 3, 2, 1 / 8, 4.71e-5, 1.60


def relu(x):
    return np.maximum(x, 0)


def draw(rng):
    q = rng.normal(size=(LQ, D)) + rng.normal(0, BLK, size=D)
    k = rng.normal(size=(LK, D)) + rng.normal(0, BLK, size=D)
    v = rng.normal(size=(LK, D))
    dO = rng.normal(size=(LQ, D))
    W = f32(rng.normal(size=(D, D)) / np.sqrt(D))
    return f16(q), f16(k), f16(v), f16(dO), W


def emulate(q, k, v, dO, W, r):  # reference_backward with rounding r (identity = oracle)
    a, pk = r(relu(q)), r(relu(k))
    H, z = r(pk.T @ v), r(pk.sum(0))
    dq, dk = np.zeros((LQ, D)), np.zeros((LK, D))
    dH, dz = np.zeros((D, D)), np.zeros(D)
    for i in range(LQ):
        s = r(S * (k @ q[i]))
        e = np.exp(s - s.max())
        P = r(e / e.sum())
        den = r(a[i] @ z + EPS)
        ol = r(r(a[i] @ H) / den)
        dol = r(dO[i] @ W)
        dP = r(v @ dO[i])
        delta = P @ dP
        ds = r(P * (dP - delta))
        dq[i] += S * ds @ k
        dk += S * np.outer(ds, q[i])
        Dr = dol @ ol
        da = r((H @ dol - Dr * z) / den)
        dH += np.outer(a[i], dol) / den
        dz -= a[i] * Dr / den
        dq[i] += (q[i] > 0) * da
    dphik = r(v @ dH.T + dz)
    dk += (k > 0) * dphik
    return r(dq), r(dk)


def kernel(q, k, v, dO, W, opt):
    # forward: O_s = sum round16(p~) v / l (P packed to fp16 for the PV mma), l = sum of unrounded p~
    a, pk = relu(q), relu(k)
    H, z = f32(pk.T @ v), f32(pk.sum(0))
    G = split(W @ H.T)  # gmat_kernel: G = W H^T, split
    dq, dk = np.zeros((LQ, D)), np.zeros((LK, D))
    E, dzk = np.zeros((D, D)), np.zeros(D)
    for i in range(LQ):
        x = f32(S * (k @ q[i]))
        pt = f32(np.exp(x - x.max()))
        l = pt.sum()
        P = f32(pt / l)  # recompute_p from the fp32 LSE
        pf = f16(pt) if opt.get("round_pfwd", True) else pt
        Os = f32(pf @ v / l)
        dP = f32(v @ dO[i])
        if opt.get("delta") == "PdP":
            delta = f32(P @ dP)
        elif opt.get("delta") == "P16dP":
            delta = f32(f16(P) @ dP)
        else:
            delta = f32(dO[i] @ Os)  # row_prep: dO . O_s
        ds = P * (dP - delta)
        if opt.get("round_ds", True):
            ds = f16(ds)  # c_to_a<T>
        dq[i] += S * ds @ k
        dk += S * np.outer(ds, q[i])
        n = f32(a[i] @ z + EPS)
        inv_n = f32(1 / n)
        A = split(a[i] * inv_n)
        u = f32(dO[i] @ G)
        Dr = f32(A @ u)
        da = f32((u - Dr * z) * inv_n)
        if opt.get("round_da"):
            da = f16(da)
        dq[i] += (q[i] > 0) * da
        E += np.outer(A, dO[i])
        dzk -= A * Dr
    dH = split(E @ W)
    dphi = v @ dH.T + dzk
    if opt.get("round_dphik"):
        dphi = f16(dphi)
    dk += (k > 0) * dphi
    return f16(dq), f16(dk)


def half_ulp(x):
    m = np.abs(x).max()
    return 2.0 ** (np.floor(np.log2(m)) - 11)


variants = {
    "kernel(as is)": {},
    "delta=sum P dP (fp32 P)": {"delta": "PdP"},
    "no fwd p~ rounding": {"round_pfwd": False},
    "delta=sum f16(P) dP": {"delta": "P16dP"},
    "as is + round da, dphik": {"round_da": True, "round_dphik": True},
}
N = int(sys.argv[1]) if len(sys.argv) > 1 else 400
res = {n: [] for n in variants}
emus = []
for seed in range(N):
    rng = np.random.default_rng(seed)
    heads = [draw(rng) for _ in range(2)]
    ex = [emulate(*h, lambda x: np.asarray(x, np.float64)) for h in heads]
    em = [emulate(*h, f16) for h in heads]
    out = {}
    for t in (0, 1):
        ref = np.concatenate([e[t].ravel() for e in ex])
        emu = np.concatenate([e[t].ravel() for e in em])
        eerr = np.abs(emu - ref).max()
        lim = 2 * max(eerr, half_ulp(ref))
        out[t] = (ref, lim)
    emus.append([out[0][1], out[1][1]])
    for name, opt in variants.items():
        kk = [kernel(*h, opt) for h in heads]
        r = []
        for t in (0, 1):
            got = np.concatenate([x[t].ravel() for x in kk])
            r.append(np.abs(got - out[t][0]).max() / out[t][1])
        res[name].append(r)
for name in variants:
    a = np.array(res[name])
    dq, dk = a[:, 0], a[:, 1]

    def stats(x):
        fail = np.mean(x > 1) * 100
        return f"median {np.median(x):.2f} p95 {np.percentile(x, 95):.2f} max {x.max():.2f} fail {fail:.1f}%"

    print(f"{name:28s} dq ratio: {stats(dq)} | dk {stats(dk)}")
