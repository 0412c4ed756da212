"""Calibration of the block-map rules (docs/BLOCK_MAP.md, "Calibration").

    with sla.record(model) as rec:          # Q, K, V of every SparseLinearAttention layer, per forward pass
        model(x)
    cal = sla.calibrate(rec, target="mass", quality=0.9, rule="top_p", budget=None)
    cal.save("sla_rules.json")              # small JSON: per layer the chosen rule and the statistics behind it
    sla.apply_rules(model, "sla_rules.json")

For each layer and head, every candidate parameter (each topk count 1..Nk, or each p of a grid) is scored on the
recorded passes: its density (mean critical blocks per row over Nk, i.e. the sparse branch's compute) and its
quality on sampled query rows against dense attention: the attention mass inside the critical blocks ("mass"), or
the relative L2 error of the sparse branch's output O_s ("error"). The chosen parameter is the cheapest one that
meets the target. With a global budget (an average density over all heads of all layers, weighted by each layer's
Nq * Nk) that the choices exceed, heads are instead raised greedily from their cheapest candidate by the best
quality gain per unit of compute until the budget is spent.

The candidate sweep ranks blocks by pooled scores computed here in float64 (the library's fp32 order can differ on
near-ties only); the final statistics of the chosen rule are measured with the library's own block map.
"""

from __future__ import annotations

import heapq
import math
import numbers
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from . import _options, atomic
from ._calibration_file import FORMAT, VERSION, Calibration, load_rules  # noqa: F401  (the file's API, re-exported)
from ._layer import RuleLayer
from ._shapes import ceil_div, topk_for_count
from .rules import BlockRule

DEFAULT_P_GRID = (
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.92,
    0.94,
    0.95,
    0.96,
    0.97,
    0.98,
    0.985,
    0.99,
    0.995,
    0.998,
    0.999,
    1.0,
)

Sample = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (B, H, L, D) q, k, v


# ---- recording --------------------------------------------------------------------------------------------------


class Recorder:
    """Collects (q, k, v) per layer name: call it as recorder(name, q, k, v) with (B, H, L, D) tensors, or install it
    on SparseLinearAttention modules with sla.record. Copies go to `device` in float32 (so a recording of a large
    model costs 3 * B * H * L * D * 4 bytes per layer and pass; keep passes few and small)."""

    def __init__(self, device: Union[str, torch.device] = "cpu", max_passes: Optional[int] = None):
        self.samples: Dict[str, List[Sample]] = {}
        self.device = torch.device(device)
        self.max_passes = max_passes

    def __call__(self, name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        rows = self.samples.setdefault(name, [])
        if self.max_passes is not None and len(rows) >= self.max_passes:
            return
        rows.append(tuple(t.detach().to(self.device, torch.float32, copy=True) for t in (q, k, v)))


def _sla_modules(model) -> List[Tuple[str, RuleLayer]]:
    """(name, layer) of every SLA layer: sla.SparseLinearAttention and the diffusers processors (RuleLayer)."""
    if isinstance(model, RuleLayer):
        return [("", model)]
    if isinstance(model, dict):
        for name, m in model.items():
            if not isinstance(m, RuleLayer):
                raise TypeError(
                    f"model[{name!r}]: expected an SLA layer (sla.SparseLinearAttention or an SLA processor), got "
                    f"{type(m).__name__}"
                )
        return list(model.items())
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module or a dict name -> SLA layer, got {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RuleLayer)]


@contextmanager
def record(model, *, device: Union[str, torch.device] = "cpu", max_passes: Optional[int] = None):
    """Records q, k, v of every SLA layer in `model` (a module, or a dict name -> layer): sla.SparseLinearAttention
    and the processors of sla.diffusers.enable_sla, for the forward passes run inside the block; yields the
    Recorder (its .samples: layer name -> list of passes, names as model.named_modules() gives them)."""
    if max_passes is not None:
        _options.check_positive_int("max_passes", max_passes)
    rec = Recorder(device, max_passes)
    mods = _sla_modules(model)
    if not mods:
        raise ValueError(
            "model: expected at least one SLA layer to record (sla.SparseLinearAttention, or a diffusers model "
            "after sla.diffusers.enable_sla)"
        )
    busy = [name for name, m in mods if m.recorder is not None]
    if busy:
        raise RuntimeError(f"model: layers {busy} are already recording (sla.record blocks do not nest)")
    for name, m in mods:
        m.recorder = lambda mod, q, k, v, _n=name: rec(_n, q, k, v)
    try:
        yield rec
    finally:
        for _, m in mods:
            m.recorder = None


# ---- statistics of one head -------------------------------------------------------------------------------------


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(L, D) -> (ceil(L / block), D) means, a partial block divided by its real row count."""
    n = ceil_div(x.shape[0], block)
    pad = x.new_zeros(n * block - x.shape[0], x.shape[1])
    sums = torch.cat([x, pad]).view(n, block, -1).sum(1)
    rows = torch.full((n,), float(block), dtype=x.dtype)
    rows[-1] = x.shape[0] - (n - 1) * block
    return sums / rows[:, None]


@dataclass
class HeadCurves:
    """Quality against every candidate of one head, accumulated over passes (means over sampled rows)."""

    k_blocks: int
    q_blocks: int
    # topk rule: candidate T = 1..Nk
    topk_mass: torch.Tensor = None  # (Nk,) sum over rows of the mass in the top-T blocks
    topk_err2: torch.Tensor = None  # (Nk,) sum over rows of |O_s(T) - O|^2 / |O|^2
    # top_p rule: candidate p of the grid
    p_density: torch.Tensor = None  # (P,) sum over all query blocks of count / Nk
    p_mass: torch.Tensor = None  # (P,)
    p_err2: torch.Tensor = None  # (P,)
    rows: int = 0  # sampled query rows seen
    blocks: int = 0  # query blocks seen (for p_density)


def _head_curves(
    q, k, v, bq, bk, scale, rows_per_head, p_grid, min_blocks, max_blocks, gen, curves: Optional[HeadCurves]
) -> HeadCurves:
    """Adds one (L, D) head of one pass to `curves`."""
    q, k, v = q.double(), k.double(), v.double()
    lq, lk = q.shape[0], k.shape[0]
    nq, nk = ceil_div(lq, bq), ceil_div(lk, bk)
    ks = k - k.mean(0, keepdim=True)
    scores = _pool(q, bq) @ _pool(ks, bk).T  # (Nq, Nk) pooled scores of docs/SPEC.md 1.3
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # ties to the lower j
    # Pooled-softmax shares and the top_p count of every query block for every p (docs/BLOCK_MAP.md).
    w = torch.softmax(scale * scores, dim=1)
    cum_share = torch.cumsum(torch.gather(w, 1, order), 1)  # (Nq, Nk)
    p = torch.tensor(p_grid, dtype=torch.float64)
    counts = (cum_share[:, None, :] < p[None, :, None] * cum_share[:, -1:, None]).sum(-1) + 1  # (Nq, P)
    hi = nk if not max_blocks else min(max_blocks, nk)
    counts = counts.clamp(min(min_blocks, hi), hi)

    # Sampled query rows: dense attention, per-block mass and P V sums, accumulated in each row's block order.
    n = min(rows_per_head, lq)
    rows = torch.randperm(lq, generator=gen)[:n].sort().values
    logits = scale * (q[rows] @ k.T)  # (n, Lk)
    prob = torch.softmax(logits, dim=1)
    pad = nk * bk - lk
    prob_b = torch.cat([prob, prob.new_zeros(n, pad)], 1).view(n, nk, bk)
    v_b = torch.cat([v, v.new_zeros(pad, v.shape[1])]).view(nk, bk, -1)
    mass_b = prob_b.sum(-1)  # (n, Nk)
    pv_b = torch.einsum("nkb,kbd->nkd", prob_b, v_b)  # (n, Nk, Dv)
    row_order = order[rows // bq]  # (n, Nk)
    cm = torch.cumsum(torch.gather(mass_b, 1, row_order), 1)  # (n, Nk)
    cpv = torch.cumsum(torch.gather(pv_b, 1, row_order[..., None].expand_as(pv_b)), 1)  # (n, Nk, Dv)
    dense = cpv[:, -1, :]
    o_s = cpv / cm[..., None].clamp_min(1e-300)
    err2 = ((o_s - dense[:, None, :]) ** 2).sum(-1) / (dense**2).sum(-1, keepdim=True).clamp_min(1e-300)

    if curves is None:
        curves = HeadCurves(
            nk,
            nq,
            torch.zeros(nk, dtype=torch.float64),
            torch.zeros(nk, dtype=torch.float64),
            torch.zeros(len(p_grid), dtype=torch.float64),
            torch.zeros(len(p_grid), dtype=torch.float64),
            torch.zeros(len(p_grid), dtype=torch.float64),
        )
    elif curves.k_blocks != nk:
        raise ValueError(f"samples: every pass of a layer must have the same Nk; got {nk} after {curves.k_blocks}")
    curves.topk_mass += cm.sum(0)
    curves.topk_err2 += err2.sum(0)
    idx = counts[rows // bq] - 1  # (n, P)
    curves.p_mass += torch.gather(cm, 1, idx).sum(0)
    curves.p_err2 += torch.gather(err2, 1, idx).sum(0)
    curves.p_density += counts.double().sum(0) / nk
    curves.rows += n
    curves.blocks += nq
    return curves


# ---- choosing ---------------------------------------------------------------------------------------------------


@dataclass
class _Candidates:
    density: List[float]  # ascending
    quality: List[float]  # higher is better (mass, or -error)
    params: List[float]  # topk fraction or p


def _candidates(c: HeadCurves, rule: str, target: str, p_grid) -> _Candidates:
    if rule == "topk":
        dens = [t / c.k_blocks for t in range(1, c.k_blocks + 1)]
        mass = (c.topk_mass / c.rows).tolist()
        err = (c.topk_err2 / c.rows).sqrt().tolist()
        params = [topk_for_count(t, c.k_blocks) for t in range(1, c.k_blocks + 1)]
    else:
        dens = (c.p_density / c.blocks).tolist()
        mass = (c.p_mass / c.rows).tolist()
        err = (c.p_err2 / c.rows).sqrt().tolist()
        params = list(p_grid)
    qual = mass if target == "mass" else [-e for e in err]
    return _Candidates(dens, qual, params)


def _meets(quality: float, target: str, level: float) -> bool:
    return quality >= level if target == "mass" else -quality <= level


def _rules_of(calibration) -> Dict[str, BlockRule]:
    if isinstance(calibration, (str, os.PathLike)):
        calibration = Calibration.load(calibration)
    if isinstance(calibration, Calibration):
        return calibration.rules()
    if not isinstance(calibration, dict):
        raise TypeError(
            "calibration: expected a file path, an sla.calibration.Calibration or a dict layer name -> "
            f"sla.BlockRule, got {type(calibration).__name__}"
        )
    for name, rule in calibration.items():
        if not isinstance(rule, BlockRule):
            raise TypeError(f"calibration[{name!r}]: expected an sla.BlockRule, got {type(rule).__name__}")
    return dict(calibration)


def apply_rules(model, calibration: Union[str, Calibration, Dict[str, BlockRule]], strict: bool = True) -> int:
    """Sets the rule of every SLA layer of `model` (sla.SparseLinearAttention, or the processors of
    sla.diffusers.enable_sla, named as model.named_modules() names them, e.g. 'blocks.3.attn1.processor') that
    `calibration` (a file path, a Calibration or a dict name -> BlockRule) names; returns how many were set.
    strict: every calibrated layer must exist in the model and every SLA layer of the model must be calibrated.
    All or nothing: every rule is checked against its layer (variant, number of heads) before any is set."""
    rules = _rules_of(calibration)
    mods = dict(_sla_modules(model))
    if strict:
        missing = sorted(set(mods) - set(rules))
        extra = sorted(set(rules) - set(mods))
        if missing or extra:
            raise ValueError(
                f"calibration: layers do not match the model (not calibrated: {missing}; not in the "
                f"model: {extra}); pass strict=False to apply the ones that match"
            )
    chosen = [(name, mods[name], rules[name]) for name in mods if name in rules]
    for name, m, rule in chosen:
        m.check_rule(rule, f"calibration[{name!r}]")
    for _, m, rule in chosen:
        m.set_rule(rule)
    return len(chosen)


def _check_pass(where: str, q, k, v) -> None:
    """One recorded pass: floating (B, H, L, D) tensors of one self- or cross-attention, finite (a NaN would make
    every statistic NaN, and the file cannot hold it)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _options.check_attention_tensor(f"{where} {name}", t)
        if t.dim() != 4:
            raise ValueError(f"{where}: expected (B, H, L, D) q, k and v, got {name} of shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{where}: {name} is empty (shape {tuple(t.shape)})")
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3] or v.shape[2] != k.shape[2]:
        raise ValueError(
            f"{where}: expected k (B, H, Lk, D) and v (B, H, Lk, Dv) to match q (B, H, Lq, D); got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: {name} holds NaN or Inf values")


def _as_samples(samples) -> Dict[str, List[Sample]]:
    if isinstance(samples, Recorder):
        samples = samples.samples
    if isinstance(samples, tuple) and len(samples) == 3 and all(isinstance(t, torch.Tensor) for t in samples):
        samples = {"": [samples]}
    if not isinstance(samples, dict) or not samples:
        raise TypeError("samples: expected a Recorder, a dict layer name -> list of (q, k, v), or one (q, k, v)")
    out = {}
    for name, passes in samples.items():
        if isinstance(passes, tuple):
            passes = [passes]
        if not isinstance(passes, list) or not passes:
            raise ValueError(f"samples[{name!r}]: expected a non-empty list of (q, k, v) passes")
        for i, p in enumerate(passes):
            if not (isinstance(p, (tuple, list)) and len(p) == 3):
                raise TypeError(f"samples[{name!r}][{i}]: expected a (q, k, v) tuple, got {type(p).__name__}")
            _check_pass(f"samples[{name!r}][{i}]", *p)
        out[name] = list(passes)
    return out


def calibrate(
    samples,
    *,
    target: str = "mass",
    quality: Optional[float] = None,
    rule: str = "top_p",
    budget: Optional[float] = None,
    block_q: int = 64,
    block_k: int = 64,
    scale: Optional[float] = None,
    rows_per_head: int = 256,
    p_grid: Sequence[float] = DEFAULT_P_GRID,
    min_blocks: int = 1,
    max_blocks: Optional[int] = None,
    seed: int = 0,
    progress: Union[bool, Callable[[str], None]] = True,
    picture_dir: Optional[str] = None,
) -> Calibration:
    """Chooses per layer and head the rule parameter that meets `quality` at the least compute (module docstring).

    Args:
        samples: a Recorder (sla.record), a dict layer name -> list of (q, k, v) passes, or one (q, k, v); tensors
            (B, H, L, D). Heads are calibrated separately; batch entries and passes are pooled.
        target: 'mass' (mean attention mass inside the critical blocks >= quality; default 0.9) or 'error'
            (RMS over rows of |O_s - O| / |O| <= quality; default 0.1).
        rule: 'topk' (per-head topk), 'top_p' (per-head p, clamped to [min_blocks, max_blocks]) or 'auto' (per layer
            the family with the lower compute at the target).
        budget: optional average density (critical blocks / Nk) over all heads of all layers.
        picture_dir: writes <layer>.png block-map pictures of the chosen rules there (needs matplotlib).
    """
    # Every argument (and the picture folder) is checked before the work, which takes minutes on a large model.
    _options.check_choice("target", target, ("mass", "error"))
    _options.check_choice("rule", rule, ("topk", "top_p", "auto"))
    expected = "in (0, 1] for target 'mass' or > 0 for 'error'"
    level = (
        (0.9 if target == "mass" else 0.1) if quality is None else _options.check_number("quality", quality, expected)
    )
    if not (math.isfinite(level) and level > 0 and (target == "error" or level <= 1)):
        raise ValueError(f"quality: expected a value {expected}, got {quality!r}")
    if budget is not None and not (0 < _options.check_number("budget", budget, "in (0, 1]") <= 1):
        raise ValueError(f"budget: expected an average density in (0, 1], got {budget!r}")
    _options.check_positive_int("rows_per_head", rows_per_head)
    _options.check_block_size("block_q", block_q)
    _options.check_block_size("block_k", block_k)
    _options.check_scale(scale)
    BlockRule.make(top_p=1.0, min_blocks=min_blocks, max_blocks=max_blocks)  # checks min_blocks and max_blocks
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r} ({type(seed).__name__})")
    p_grid = tuple(p_grid) if isinstance(p_grid, Iterable) and not isinstance(p_grid, str) else (p_grid,)
    if not all(isinstance(p, numbers.Real) and not isinstance(p, bool) for p in p_grid):  # numpy floats are Real
        raise TypeError(f"p_grid: expected a sequence of numbers, got {p_grid!r}")
    p_grid = tuple(float(p) for p in p_grid)
    if not p_grid or any(not (0 < p <= 1) for p in p_grid) or list(p_grid) != sorted(p_grid):
        raise ValueError(f"p_grid: expected ascending values in (0, 1], got {p_grid}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress: expected True, False or a callable(str), got {type(progress).__name__}")
    if picture_dir is not None:
        picture_dir = atomic.check_output_path("picture_dir", picture_dir, folder=True)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if progress is True else (progress or (lambda s: None))
    data = _as_samples(samples)
    gen = torch.Generator().manual_seed(seed)

    # 1. Curves of every head of every layer.
    curves: Dict[str, List[HeadCurves]] = {}
    shapes: Dict[str, dict] = {}
    for li, (name, passes) in enumerate(data.items()):
        heads = passes[0][0].shape[1]
        d = passes[0][0].shape[3]
        s = (1.0 / math.sqrt(d)) if scale is None else float(scale)
        hc: List[Optional[HeadCurves]] = [None] * heads
        for q, k, v in passes:
            if q.shape[1] != heads:
                raise ValueError(f"samples[{name!r}]: every pass must have H = {heads} heads, got {q.shape[1]}")
            for b in range(q.shape[0]):
                for h in range(heads):
                    hc[h] = _head_curves(
                        q[b, h],
                        k[b, h],
                        v[b, h],
                        block_q,
                        block_k,
                        s,
                        rows_per_head,
                        p_grid,
                        min_blocks,
                        max_blocks,
                        gen,
                        hc[h],
                    )
        curves[name] = hc  # type: ignore[assignment]
        shapes[name] = dict(
            heads=heads,
            lq=passes[0][0].shape[2],
            lk=passes[0][1].shape[2],
            d=d,
            q_blocks=hc[0].q_blocks,
            k_blocks=hc[0].k_blocks,
            passes=len(passes),
            batch=passes[0][0].shape[0],
            scale=s,
        )
        say(
            f"calibrate: [{li + 1}/{len(data)}] {name or '<layer>'}: H={heads} Nq={hc[0].q_blocks} "
            f"Nk={hc[0].k_blocks}, {len(passes)} pass(es), {hc[0].rows} sampled rows per head"
        )

    # 2. Per layer the rule family, per head the cheapest candidate meeting the target.
    family: Dict[str, str] = {}
    cands: Dict[str, List[_Candidates]] = {}
    choice: Dict[str, List[int]] = {}
    for name, hc in curves.items():
        options = ["topk", "top_p"] if rule == "auto" else [rule]
        best = None
        for fam in options:
            cs = [_candidates(c, fam, target, p_grid) for c in hc]
            picks = []
            for c in cs:
                idx = next((i for i, qv in enumerate(c.quality) if _meets(qv, target, level)), len(c.quality) - 1)
                picks.append(idx)
            cost = sum(c.density[i] for c, i in zip(cs, picks))
            if best is None or cost < best[0]:
                best = (cost, fam, cs, picks)
        _, family[name], cands[name], choice[name] = best

    # 3. Global budget: raise heads greedily from their cheapest candidate while the weighted density fits.
    weights = {n: shapes[n]["q_blocks"] * shapes[n]["k_blocks"] for n in curves}
    total_w = sum(weights[n] * shapes[n]["heads"] for n in curves)

    def avg_density(ch):
        return sum(weights[n] * cands[n][h].density[i] for n in ch for h, i in enumerate(ch[n])) / total_w

    budget_bound = False
    if budget is not None and avg_density(choice) > budget:
        budget_bound = True
        goal = choice
        cur = {n: [0] * len(goal[n]) for n in goal}
        spent = avg_density(cur)
        heap = []

        def push(n, h):
            i = cur[n][h]
            c = cands[n][h]
            # next candidate with a strictly higher density, up to the head's target choice
            j = i + 1
            while j <= goal[n][h] and c.density[j] <= c.density[i]:
                j += 1
            if j <= goal[n][h]:
                cost = weights[n] * (c.density[j] - c.density[i]) / total_w
                gain = c.quality[j] - c.quality[i]
                heapq.heappush(heap, (-gain / max(cost, 1e-15), n, h, j, cost))

        for n in cur:
            for h in range(len(cur[n])):
                push(n, h)
        while heap:
            _, n, h, j, cost = heapq.heappop(heap)
            if spent + cost > budget + 1e-12:
                continue
            cur[n][h] = j
            spent += cost
            push(n, h)
        choice = cur

    # 4. Rules, and their statistics (expected from the curves).
    layers: Dict[str, dict] = {}
    for name in curves:
        fam = family[name]
        cs, picks = cands[name], choice[name]
        params = [c.params[i] for c, i in zip(cs, picks)]
        if fam == "topk":
            r = BlockRule.make(topk=params)
        else:
            r = BlockRule.make(top_p=params, min_blocks=min_blocks, max_blocks=max_blocks)
        heads_stats = []
        for c, i in zip(cs, picks):
            heads_stats.append(
                dict(
                    param=c.params[i],
                    density=c.density[i],
                    mass=c.quality[i] if target == "mass" else None,
                    error=-c.quality[i] if target == "error" else None,
                    met=_meets(c.quality[i], target, level),
                )
            )
        # Both measures for the record.
        for h, hs in enumerate(heads_stats):
            hcur = curves[name][h]
            i = picks[h]
            if fam == "topk":
                hs["mass"] = float(hcur.topk_mass[i] / hcur.rows)
                hs["error"] = float((hcur.topk_err2[i] / hcur.rows).sqrt())
            else:
                hs["mass"] = float(hcur.p_mass[i] / hcur.rows)
                hs["error"] = float((hcur.p_err2[i] / hcur.rows).sqrt())
        layers[name] = dict(
            rule=r.to_dict(),
            family=fam,
            shape=shapes[name],
            heads=heads_stats,
            mean_density=sum(h["density"] for h in heads_stats) / len(heads_stats),
        )
        dens = " ".join(f"{h['density']:.3f}" for h in heads_stats)
        say(
            f"calibrate: {name or '<layer>'}: {fam}, density per head [{dens}], mean {layers[name]['mean_density']:.3f}"
        )
    settings = dict(
        target=target,
        quality=level,
        rule=rule,
        budget=budget,
        budget_bound=budget_bound,
        block_q=block_q,
        block_k=block_k,
        rows_per_head=rows_per_head,
        p_grid=list(p_grid),
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        seed=seed,
        average_density=avg_density(choice),
    )
    cal = Calibration(layers, settings)
    say(
        f"calibrate: average density {settings['average_density']:.4f}"
        + (f" (budget {budget} binds)" if budget_bound else "")
    )
    if picture_dir is not None:
        write_pictures(cal, data, picture_dir, say)
    return cal


def write_pictures(
    cal: Calibration, samples: Dict[str, List[Sample]], out_dir: str, say: Callable[[str], None]
) -> List[str]:
    """One PNG per layer: the critical blocks of each head (first pass, batch 0) under the chosen rule."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("calibrate: matplotlib is not installed; skipping the block-map pictures")
        return []
    from .blockmap import block_map

    os.makedirs(out_dir, exist_ok=True)
    written = []
    bq, bk = cal.settings["block_q"], cal.settings["block_k"]
    for name, entry in cal.layers.items():
        q, k, _ = samples[name][0]
        bmap = block_map(
            q[:1], k[:1], block_q=bq, block_k=bk, rule=BlockRule.from_dict(entry["rule"]), with_inverse=False
        )
        heads = q.shape[1]
        nk = bmap.k_blocks
        fig, axes = plt.subplots(1, heads, figsize=(2.2 * heads, 2.6), squeeze=False)
        for h in range(heads):
            lut, count = bmap.lut[0, h].long(), bmap.count[0, h].long()
            mask = torch.zeros(lut.shape[0], nk + 1, dtype=torch.bool)
            valid = torch.arange(lut.shape[1])[None, :] < count[:, None]
            mask.scatter_(1, torch.where(valid, lut, nk), True)
            ax = axes[0][h]
            ax.imshow(mask[:, :nk].numpy(), cmap="Greys", interpolation="nearest", aspect="auto")
            ax.set_title(f"h{h} {entry['heads'][h]['density']:.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{name or 'layer'}: {entry['family']}, mean density {entry['mean_density']:.3f}", fontsize=9)
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in (name or "layer"))
        path = os.path.join(out_dir, f"{safe}.png")
        try:
            with atomic.atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        written.append(path)
    say(f"calibrate: wrote {len(written)} block-map picture(s) to {out_dir}")
    return written


__all__ = ["Calibration", "Recorder", "apply_rules", "calibrate", "load_rules", "record"]
