#!/usr/bin/env python3
"""Does SLA keep a video DiT's quality after a short fine-tune? The paper's ablation (arXiv 2509.24006, Table 2),
reproduced on a model trained here from scratch (docs/QUALITY.md).

1. Data: procedural latent videos (bench/quality_data.py): textured shapes that move, rotate and occlude each other
   under a panning camera, 16 channels like Wan's latents; by default 16 frames of 32 x 32 latents, 4096 tokens
   after the 1 x 2 x 2 patch. Infinite stream: training clip i of step s is clip s * batch + i of the seed; the
   held-out clips come from another index range, so the held-out loss measures generalisation, not memory.
2. Model: diffusers' WanTransformer3DModel at small width; the "text" is a learned embedding of the clip's class
   (its shape kind), fed as encoder_hidden_states; Wan's rectified flow: x_t = (1 - s) x_0 + s e, velocity target
   e - x_0, timestep 1000 s, s from the shifted uniform law s = shift u / (1 + (shift - 1) u).
3. Pre-training: the dense model until its held-out loss flattens (or --pretrain-steps); saved to --checkpoint
   (reused when it exists: pre-training is skipped).
4. Arms, each from that checkpoint with the same clips, noise and timesteps in the same order and the same steps:
   dense (the control), SLA global topk 0.05 and 0.1, SLA complement topk 0.05 with negligible 0.1 (the paper's
   k_h 5%, k_l 10%), SLA global 0.05 in 3D tile order, sparse-only (SLA global 0.05, projection frozen at zero),
   linear-only (the linear branch alone, softmax feature map, projection from identity); each under teacher
   distillation (MSE to the frozen dense model's velocity on the same inputs) and under the plain diffusion loss.
5. Report: held-out diffusion loss and MSE to the teacher at fixed noise and timesteps (before, during, after),
   and samples: from the same initial noise and classes, every arm's Euler sample against the teacher's (PSNR,
   relative L2); quality.json, samples.png (a strip of frames), losses.png (curves), and a table on stdout.

    python3 bench/quality.py --out results/            # GPU defaults (about 6 minutes on one H100, docs/QUALITY.md)
    python3 bench/quality.py --smoke --out /tmp/q      # every code path on the CPU in seconds (the CI test)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_data import SHAPES, make_clips  # noqa: E402

# ---- configuration -----------------------------------------------------------------------------------------------

# Sizes and steps; every entry is also a command-line flag (--pretrain-steps etc.). "gpu": one H100 in about 6
# minutes (the estimate is in docs/QUALITY.md); "smoke": the same code paths on the CPU in seconds.
PRESETS = {
    "gpu": dict(
        frames=16,
        height=32,
        width=32,
        objects=4,
        heads=4,
        head_dim=64,
        layers=4,
        ffn_dim=512,
        text_dim=64,
        text_len=4,
        freq_dim=256,
        block_q=128,
        block_k=64,
        tile=(4, 4, 4),
        batch=8,
        lr=5e-4,
        warmup=200,
        pretrain_steps=4000,
        min_pretrain_steps=1500,
        plateau_evals=4,
        plateau_tol=0.01,
        ft_steps=300,
        ft_lr=1e-4,
        ft_warmup=30,
        eval_every=100,
        ft_eval_every=50,
        eval_clips=32,
        sample_clips=4,
        sample_steps=25,
        device="cuda",
        amp=True,
    ),
    "smoke": dict(
        frames=4,
        height=16,
        width=16,
        objects=2,
        heads=2,
        head_dim=16,
        layers=2,
        ffn_dim=64,
        text_dim=16,
        text_len=2,
        freq_dim=16,
        block_q=16,
        block_k=16,
        tile=(4, 4, 4),
        batch=2,
        lr=1e-3,
        warmup=2,
        pretrain_steps=6,
        min_pretrain_steps=4,
        plateau_evals=2,
        plateau_tol=0.01,
        ft_steps=2,
        ft_lr=1e-4,
        ft_warmup=1,
        eval_every=2,
        ft_eval_every=1,
        eval_clips=2,
        sample_clips=2,
        sample_steps=2,
        device="cpu",
        amp=False,
    ),
}
CHANNELS = 16  # Wan's latent channels
SHIFT = 3.0  # Wan's flow shift at 480p, for training and sampling
HELD_OUT = 1_000_000_000  # held-out clip indices start here; training clips stay below
FINETUNE = 500_000_000  # fine-tuning clips start here: new clips, the same for every arm

# name -> options: sla = enable_sla options (None: dense), and how the arm trains.
ARMS = {
    "dense": dict(sla=None),
    "sla_global_0.05": dict(sla=dict(topk=0.05)),
    "sla_global_0.1": dict(sla=dict(topk=0.1)),
    "sla_complement_0.05_negl_0.1": dict(sla=dict(topk=0.05, variant="complement", negligible=0.1)),
    "sla_global_0.05_tiles": dict(sla=dict(topk=0.05), tiles=True),
    # Per-head topk from sla.calibrate on the dense model's own q, k, v (attention mass inside the critical blocks,
    # under an average density equal to topk 0.05's): the calibrated rules' gain at the same compute.
    "sla_calibrated_0.05": dict(sla=dict(topk=0.05), calibrate=dict(rule="topk", target="mass", quality=0.99)),
    "sparse_only_0.05": dict(sla=dict(topk=0.05), freeze_proj=True),
    "linear_only": dict(sla=None, linear_only=True),
}
LOSSES = ("distill", "diffusion")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: every code path in seconds")
    p.add_argument("--out", required=True, help="folder for quality.json, samples.png, losses.png")
    p.add_argument("--checkpoint", help="the dense model (default OUT/dense.safetensors); reused when it exists")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--losses", default=",".join(LOSSES), help="distill,diffusion or one of them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--proj-lr",
        type=float,
        default=None,
        help="learning rate of the SLA projections (proj_l) in the fine-tunes (default: --ft-lr, as every weight)",
    )
    for key, value in PRESETS["gpu"].items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                default=None,
                help=f"true/false (gpu default {value})",
            )
        elif isinstance(value, tuple):
            p.add_argument(
                flag,
                type=lambda s: tuple(int(x) for x in s.split(",")),
                default=None,
                help=f"comma-separated (gpu default {','.join(map(str, value))})",
            )
        else:
            p.add_argument(flag, type=type(value), default=None, help=f"(gpu default {value})")
    args = p.parse_args(argv)
    preset = PRESETS["smoke" if args.smoke else "gpu"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.arms = [a for a in args.arms.split(",") if a]
    args.losses = [x for x in args.losses.split(",") if x]
    unknown = [a for a in args.arms if a not in ARMS] + [x for x in args.losses if x not in LOSSES]
    if unknown:
        p.error(f"unknown arm or loss {unknown}; arms: {list(ARMS)}, losses: {list(LOSSES)}")
    if args.checkpoint is None:
        args.checkpoint = os.path.join(args.out, "dense.safetensors")
    return args


def model_config(args) -> dict:
    """What defines the pre-trained model: a checkpoint is reused only when this matches."""
    return dict(
        wan=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=args.heads,
            attention_head_dim=args.head_dim,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            text_dim=args.text_dim,
            freq_dim=args.freq_dim,
            ffn_dim=args.ffn_dim,
            num_layers=args.layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ),
        classes=len(SHAPES),
        text_len=args.text_len,
        data=dict(seed=args.seed, frames=args.frames, height=args.height, width=args.width, objects=args.objects),
    )


# ---- model -------------------------------------------------------------------------------------------------------


class Denoiser(nn.Module):
    """WanTransformer3DModel with a learned class embedding in place of the text encoder's output: class c is
    text_len tokens of width text_dim (Wan's cross-attention then attends to them as to a caption)."""

    def __init__(self, config: dict):
        super().__init__()
        from diffusers import WanTransformer3DModel

        self.text_len, self.text_dim = config["text_len"], config["wan"]["text_dim"]
        self.transformer = WanTransformer3DModel(**config["wan"])
        self.class_embed = nn.Embedding(config["classes"], self.text_len * self.text_dim)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        context = self.class_embed(labels).view(-1, self.text_len, self.text_dim)
        return self.transformer(x, timestep, context, return_dict=False)[0]


def linear_only_processor_class():
    import sla.diffusers as sd

    class LinearOnlyProcessor(sd.SLAWanAttnProcessor):
        """The linear branch alone (the paper's "linear only" ablation): O = phi(Q) (phi(K)^T V) / (phi(Q) z + eps)
        with phi = softmax over the head dim (docs/SPEC.md section 3, global variant), then the layer's projection,
        initialised to the identity so that training starts from plain linear attention rather than from zero
        output. In PyTorch and float32 (L x D x D work: cheap next to the rest of the model)."""

        def __init__(self, head_dim: int, device=None):
            super().__init__(head_dim, device=device)
            with torch.no_grad():
                nn.init.eye_(self.proj_l.weight)

        def local_attention(self, query, key, value):  # (B, L, H, D) in and out
            with torch.autocast(query.device.type, enabled=False):
                q, k, v = (t.float() for t in (query, key, value))
                phi_q, phi_k = q.softmax(-1), k.softmax(-1)
                state = torch.einsum("blhd,blhe->bhde", phi_k, v)
                z = phi_k.sum(1)  # (B, H, D)
                num = torch.einsum("blhd,bhde->blhe", phi_q, state)
                den = torch.einsum("blhd,bhd->blh", phi_q, z).unsqueeze(-1) + self.eps
                return self.proj_l(num / den).to(query.dtype)

    return LinearOnlyProcessor


def make_arm(teacher: Denoiser, arm: dict, args, calibration_batches=(), amp=contextlib.nullcontext) -> Denoiser:
    """A trainable copy of the dense model with the arm's attention. An arm with `calibrate` gets per-head rules
    from sla.calibrate on the q, k, v its SLA layers see on `calibration_batches` (x_t, t, labels), before any
    training; the summary is left in `student.calibration`."""
    import sla
    import sla.diffusers as sd

    student = copy.deepcopy(teacher).requires_grad_(True)
    wan = student.transformer
    if arm.get("linear_only"):
        cls = linear_only_processor_class()
        for _, attn in sd.self_attention_layers(wan):
            attn.set_processor(cls(attn.inner_dim // attn.heads, device=attn.to_out[0].weight.device))
    elif arm["sla"] is not None:
        sd.enable_sla(
            wan, block_q=args.block_q, block_k=args.block_k, tile=args.tile if arm.get("tiles") else None, **arm["sla"]
        )
        if arm.get("freeze_proj"):
            for proc in sd.sla_processors(wan).values():
                proc.proj_l.requires_grad_(False)  # stays zero: sparse attention alone
        if arm.get("calibrate"):
            if not calibration_batches:
                raise ValueError("an arm with calibrate needs calibration_batches")
            with sla.record(wan, max_passes=len(calibration_batches)) as rec:
                with torch.no_grad(), amp():
                    for x_t, t, labels in calibration_batches:
                        student(x_t, t, labels)
            budget = density(arm, args)["critical"]
            cal = sla.calibrate(
                rec, budget=budget, block_q=args.block_q, block_k=args.block_k, progress=False, **arm["calibrate"]
            )
            sla.apply_rules(wan, cal)
            student.calibration = dict(
                average_density=cal.settings["average_density"],
                budget=budget,
                budget_bound=cal.settings["budget_bound"],
                topk_per_layer={n: [h["param"] for h in e["heads"]] for n, e in cal.layers.items()},
            )
    return student


def density(arm: dict, args) -> dict:
    """Fraction of key blocks each query block attends exactly (critical) and skips (negligible): docs/SPEC.md 1.4."""
    if arm["sla"] is None:
        return dict(critical=0.0 if arm.get("linear_only") else 1.0, negligible=0.0)
    tokens = (args.frames // 1) * (args.height // 2) * (args.width // 2)
    nk = -(-tokens // args.block_k)
    crit = min(nk, max(1, math.floor(arm["sla"]["topk"] * nk)))
    negl = math.floor(arm["sla"].get("negligible", 0.0) * nk)
    return dict(critical=crit / nk, negligible=negl / nk)


# ---- data, noise, objective --------------------------------------------------------------------------------------


def sigma_from_u(u: torch.Tensor) -> torch.Tensor:
    return SHIFT * u / (1 + (SHIFT - 1) * u)


class Stream:
    """Training batches by step: clips (offset + step * batch ...), noise and sigmas from a generator seeded by the
    step, so every arm sees exactly the same inputs. Clips are cached (rendered once for all arms)."""

    def __init__(self, args, offset: int, device, cache: bool):
        self.args, self.offset, self.device, self.cache = args, offset, device, {} if cache else None

    def clips(self, step: int):
        if self.cache is not None and step in self.cache:
            return self.cache[step]
        a = self.args
        first = self.offset + step * a.batch
        out = make_clips(
            range(first, first + a.batch),
            seed=a.seed,
            frames=a.frames,
            height=a.height,
            width=a.width,
            channels=CHANNELS,
            objects=a.objects,
            device=self.device,
        )
        if self.cache is not None:
            self.cache[step] = out
        return out

    def batch(self, step: int):
        x0, labels = self.clips(step)
        g = torch.Generator(device=self.device).manual_seed(self.args.seed * 1_000_003 + self.offset + step)
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        sigma = sigma_from_u(torch.rand(x0.shape[0], generator=g, device=self.device))
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, 1000 * sigma, labels, noise - x0


class HeldOut:
    """Fixed held-out inputs: clips, noise and stratified sigmas (one per clip, u = (i + 1/2) / n), the target
    velocity, and (once the teacher is known) the teacher's prediction."""

    def __init__(self, args, device):
        x0, self.labels = make_clips(
            range(HELD_OUT, HELD_OUT + args.eval_clips),
            seed=args.seed,
            frames=args.frames,
            height=args.height,
            width=args.width,
            channels=CHANNELS,
            objects=args.objects,
            device=device,
        )
        g = torch.Generator().manual_seed(args.seed + 12345)
        noise = torch.randn(x0.shape, generator=g).to(device)
        sigma = sigma_from_u((torch.arange(args.eval_clips, dtype=torch.float32) + 0.5) / args.eval_clips).to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        self.x_t, self.t, self.target = (1 - s) * x0 + s * noise, 1000 * sigma, noise - x0
        self.teacher = None
        self.batch = args.batch

    @torch.no_grad()
    def predict(self, model, amp) -> torch.Tensor:
        model.eval()
        outs = []
        for i in range(0, self.x_t.shape[0], self.batch):
            sl = slice(i, i + self.batch)
            with amp():
                outs.append(model(self.x_t[sl], self.t[sl], self.labels[sl]).float())
        model.train()
        return torch.cat(outs)

    def evaluate(self, model, amp) -> dict:
        pred = self.predict(model, amp)
        out = dict(diffusion=torch.mean((pred - self.target) ** 2).item())
        if self.teacher is not None:
            out["teacher_mse"] = torch.mean((pred - self.teacher) ** 2).item()
        return out


def lr_at(step: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (step + 1) / max(1, warmup))


def progress(total, desc):
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=1.0)
    except ImportError:  # pragma: no cover - tqdm is installed with the benchmark requirements
        return None


def make_optimizer(model, lr: float, proj_lr=None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; with `proj_lr`, the SLA projections (`...proj_l.*`) in a group of their
    own at that rate. Each group's `base_lr` is the rate the warm-up ramps to."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    proj = [p for n, p in named if ".proj_l." in n] if proj_lr is not None else []
    ids = {id(p) for p in proj}
    groups = [dict(params=[p for _, p in named if id(p) not in ids], base_lr=lr), dict(params=proj, base_lr=proj_lr)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=0.01, betas=(0.9, 0.99))


def train(
    model, stream, steps, lr, warmup, loss_kind, teacher, held_out, eval_every, amp, desc, plateau=None, proj_lr=None
) -> dict:
    """Trains `model` for `steps` on `stream` (AdamW, linear warm-up then constant, clip 1.0, weight decay 0.01 as
    TurboDiffusion's recipe), evaluating on `held_out` at step 0, every `eval_every` steps and at the end.
    `plateau` = (min_steps, evals, tol) stops when the best held-out loss of the last `evals` evaluations improved on
    the best before them by less than `tol` (relative): the pre-training's "until it flattens". `proj_lr`, when
    given, is the learning rate of the SLA projections (parameters named `...processor.proj_l.*`)."""
    opt = make_optimizer(model, lr, proj_lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    curve, train_losses = [], []
    key = "teacher_mse" if loss_kind == "distill" else "diffusion"
    curve.append(dict(step=0, **held_out.evaluate(model, amp)))
    bar = progress(steps, desc)
    flattened, step = False, 0
    for step in range(steps):
        x_t, t, labels, target = stream.batch(step)
        if loss_kind == "distill":
            with torch.no_grad(), amp():
                target = teacher(x_t, t, labels).float()
        with amp():
            pred = model(x_t, t, labels)
        loss = torch.mean((pred.float() - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, group["base_lr"], warmup)
        opt.step()
        train_losses.append(loss.item() if (step + 1) % 10 == 0 or step + 1 == steps else math.nan)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append(dict(step=step + 1, **held_out.evaluate(model, amp)))
            if not math.isfinite(curve[-1][key]):
                raise RuntimeError(f"{desc}: held-out loss is {curve[-1][key]} at step {step + 1}")
            if plateau is not None and step + 1 >= plateau[0] and len(curve) > plateau[1]:
                recent = min(c[key] for c in curve[-plateau[1] :])
                before = min(c[key] for c in curve[: -plateau[1]])
                if recent > before * (1 - plateau[2]):
                    flattened = True
                    break
        if bar is not None:
            bar.update(1)
            if not math.isnan(train_losses[-1]):
                bar.set_postfix(loss=f"{train_losses[-1]:.4g}", held_out=f"{curve[-1][key]:.4g}")
    if bar is not None:
        bar.close()
    return dict(
        curve=curve,
        steps=step + 1,
        flattened=flattened,
        train_loss=[(i + 1, v) for i, v in enumerate(train_losses) if not math.isnan(v)],
    )


def sla_projections(model) -> list:
    """The SLA layers' projections of the linear branch (`...proj_l`, zero at the start of fine-tuning)."""
    return [m for n, m in model.named_modules() if n.endswith(".proj_l") and isinstance(m, nn.Linear)]


def linear_branch_probe(model, held_out, amp) -> dict | None:
    """What the fine-tuned linear branch contributes: the SLA projections' mean Frobenius norms, and the held-out
    losses of the same model with every projection set to zero (the linear branch switched off at inference, i.e.
    the model as sparse-only). Equal losses mean the linear branch does nothing; the projections are restored.
    None for a model without SLA projections."""
    projs = sla_projections(model)
    if not projs:
        return None
    saved = [(p.weight.detach().clone(), p.bias.detach().clone()) for p in projs]
    weight_norm = sum(torch.linalg.matrix_norm(w.float()).item() for w, _ in saved) / len(saved)
    bias_norm = sum(torch.linalg.vector_norm(b.float()).item() for _, b in saved) / len(saved)
    try:
        with torch.no_grad():
            for p in projs:
                p.weight.zero_()
                p.bias.zero_()
        without = held_out.evaluate(model, amp)
    finally:
        with torch.no_grad():
            for p, (w, b) in zip(projs, saved):
                p.weight.copy_(w)
                p.bias.copy_(b)
    return dict(proj_weight_norm=weight_norm, proj_bias_norm=bias_norm, without_linear=without)


# ---- sampling ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(model, noise, labels, steps, amp) -> torch.Tensor:
    """Euler steps of the flow ODE from sigma 1 to 0 on Wan's shifted schedule (no guidance)."""
    model.eval()
    sigmas = sigma_from_u(torch.linspace(1, 0, steps + 1)).tolist()
    x = noise.clone()
    for i in range(steps):
        t = torch.full((x.shape[0],), 1000 * sigmas[i], device=x.device)
        with amp():
            v = model(x, t, labels).float()
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    model.train()
    return x


def compare(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """PSNR against the teacher's sample, with the teacher's peak-to-peak range as the peak (latents have no fixed
    range), capped at 200 dB for identical samples; and the relative L2 error."""
    mse = torch.mean((x - ref) ** 2).item()
    peak = (ref.max() - ref.min()).item()
    psnr = 200.0 if mse <= peak**2 * 1e-20 else min(200.0, 10 * math.log10(peak**2 / mse))
    return dict(psnr_db=psnr, rel_l2=(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref)).item())


# ---- output ------------------------------------------------------------------------------------------------------


def atomic_write(path: str, write) -> None:
    """write(tmp_path), then rename: a reader sees the old file or the whole new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def save_checkpoint(path, model, config):
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"config": json.dumps(config)}))


def load_checkpoint(path, model, config) -> bool:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.exists(path):
        return False
    with safe_open(path, "pt") as f:
        saved = json.loads((f.metadata() or {}).get("config", "null"))
    if saved != json.loads(json.dumps(config)):
        raise SystemExit(
            f"--checkpoint {path}: made with another configuration ({saved}); expected {config}. "
            "Delete it or pass another --checkpoint path."
        )
    model.load_state_dict(load_file(path), strict=True)
    return True


def to_rgb(clips: torch.Tensor, basis=None, lo=None, hi=None):
    """(N, C, F, H, W) latents to (N, F, H, W, 3) in [0, 1]: the 3 principal components of the channels of the
    first clip (the teacher's), scaled by its 1st and 99th percentiles; the same map for every row."""
    if basis is None:
        pixels = clips[0].flatten(1).T.double()
        pixels = pixels - pixels.mean(0)
        basis = torch.linalg.eigh(pixels.T @ pixels).eigenvectors[:, -3:].flip(1).float()
    rgb = torch.einsum("ncfhw,ck->nfhwk", clips.float(), basis)
    if lo is None:
        lo, hi = torch.quantile(rgb[0].flatten(0, 3), 0.01, dim=0), torch.quantile(rgb[0].flatten(0, 3), 0.99, dim=0)
    return ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1), basis, lo, hi


def write_strip(path, rows: list[tuple[str, torch.Tensor]], scale: int = 4):
    """One row per arm (its first sampled clip), up to 8 frames per row, nearest-neighbour upscaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stack = torch.stack([clip for _, clip in rows]).cpu()  # (R, C, F, H, W)
    rgb, *_ = to_rgb(stack)
    frames = stack.shape[2]
    cols = list(range(0, frames, max(1, frames // 8)))[:8]
    r, h, w = rgb.shape[0], rgb.shape[2], rgb.shape[3]
    mosaic = rgb[:, cols].permute(0, 2, 1, 3, 4).reshape(r * h, len(cols) * w, 3)
    mosaic = mosaic.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    fig, ax = plt.subplots(figsize=(len(cols) * w * scale / 100 + 3, r * h * scale / 100 + 0.6), dpi=100)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * h * scale for i in range(r)], [name for name, _ in rows], fontsize=8)
    ax.set_xticks([(j + 0.5) * w * scale for j in range(len(cols))], [f"frame {c}" for c in cols], fontsize=8)
    ax.set_title("samples from the same noise and class (first clip)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_curves(path, results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    pre = results["pretrain"]["curve"]
    axes[0].plot([c["step"] for c in pre], [c["diffusion"] for c in pre], marker=".")
    axes[0].set(title="dense pre-training: held-out diffusion loss", xlabel="step", yscale="log")
    for ax, loss, key, title in (
        (axes[1], "distill", "teacher_mse", "teacher distillation: held-out MSE to the teacher"),
        (axes[2], "diffusion", "diffusion", "diffusion loss: held-out diffusion loss"),
    ):
        for arm, per_loss in results["arms"].items():
            if loss in per_loss:
                curve = per_loss[loss]["curve"]
                ax.plot([c["step"] for c in curve], [max(c[key], 1e-12) for c in curve], marker=".", label=arm)
        ax.set(title=title, xlabel="fine-tuning step", yscale="log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def table(results: dict) -> str:
    lines = [
        "| arm | loss | critical / negligible blocks | held-out diffusion loss | MSE to teacher"
        " | sample PSNR vs teacher (dB) | sample rel. L2 |",
        "|---|---|---|---|---|---|---|",
        f"| teacher (dense, pre-trained) | - | 1 / 0 | {results['teacher']['diffusion']:.4f} | 0 | - | - |",
    ]
    for arm, per_loss in results["arms"].items():
        for loss, r in per_loss.items():
            end = r["curve"][-1]
            d = r["density"]
            lines.append(
                f"| {arm} | {loss} | {d['critical']:.3f} / {d['negligible']:.3f} | {end['diffusion']:.4f} | "
                f"{end['teacher_mse']:.5f} | {r['sample']['psnr_db']:.2f} | {r['sample']['rel_l2']:.4f} |"
            )
    probes = [
        (arm, loss, r["curve"][-1], r["linear_branch"])
        for arm, per_loss in results["arms"].items()
        for loss, r in per_loss.items()
        if "linear_branch" in r
    ]
    if probes:
        lines += [
            "",
            "| arm | loss | projection mean ||W||_F / ||b|| | held-out diffusion loss: as trained / projection zeroed"
            " | MSE to teacher: as trained / projection zeroed |",
            "|---|---|---|---|---|",
        ]
        for arm, loss, end, pr in probes:
            off = pr["without_linear"]
            lines.append(
                f"| {arm} | {loss} | {pr['proj_weight_norm']:.4f} / {pr['proj_bias_norm']:.4f} | "
                f"{end['diffusion']:.4f} / {off['diffusion']:.4f} | "
                f"{end['teacher_mse']:.5f} / {off['teacher_mse']:.5f} |"
            )
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------------------------


def write_results(out: str, results: dict, strip: list, complete: bool) -> None:
    """quality.json, samples.png and losses.png of the arms finished so far (each written whole: atomic_write);
    `complete` is False in the JSON until the last arm is done."""
    results["complete"] = complete
    write_strip(os.path.join(out, "samples.png"), strip)
    write_curves(os.path.join(out, "losses.png"), results)
    text = json.dumps(results, indent=1, default=str)
    atomic_write(os.path.join(out, "quality.json"), lambda tmp: write_text(tmp, text))


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.smoke:
        # Tensors of a few hundred tokens gain nothing from intra-op threads, and on a busy CI machine the threads
        # cost more than the work (40 s instead of 5 s on 2 shared cores).
        torch.set_num_threads(1)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args) -> dict:
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device (use --smoke or --device cpu)")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)

    def amp():
        # bf16 autocast over fp32 weights on the GPU (the recipe's mixed precision); float32 on the CPU.
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")

    config = model_config(args)
    teacher = Denoiser(config)
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    n_params = sum(p.numel() for p in teacher.parameters())
    print(
        f"model: {n_params / 1e6:.2f} M parameters, {tokens} tokens per clip, batch {args.batch}, device {device}",
        flush=True,
    )
    held_out = HeldOut(args, device)
    timings = {}
    t0 = time.perf_counter()
    if load_checkpoint(args.checkpoint, teacher, config):
        pretrain = dict(reused=args.checkpoint, curve=[], steps=0, flattened=None)
        print(f"pre-training skipped: loaded {args.checkpoint}", flush=True)
        teacher.to(device)
    else:
        teacher.to(device)
        pretrain = train(
            teacher,
            Stream(args, 0, device, cache=False),
            args.pretrain_steps,
            args.lr,
            args.warmup,
            "diffusion",
            None,
            held_out,
            args.eval_every,
            amp,
            "pre-train dense",
            plateau=(args.min_pretrain_steps, args.plateau_evals, args.plateau_tol),
        )
        save_checkpoint(args.checkpoint, teacher, config)
        print(
            f"pre-trained {pretrain['steps']} steps (held-out loss "
            f"{'flattened' if pretrain['flattened'] else 'still falling at the step limit'}); "
            f"saved {args.checkpoint}",
            flush=True,
        )
    timings["pretrain_s"] = time.perf_counter() - t0
    teacher.eval().requires_grad_(False)
    held_out.teacher = held_out.predict(teacher, amp)
    teacher_eval = held_out.evaluate(teacher, amp)

    g = torch.Generator().manual_seed(args.seed + 777)
    sample_noise = torch.randn(args.sample_clips, CHANNELS, args.frames, args.height, args.width, generator=g)
    sample_noise = sample_noise.to(device)
    sample_labels = (torch.arange(args.sample_clips) % len(SHAPES)).to(device)
    t0 = time.perf_counter()
    teacher_sample = sample(teacher, sample_noise, sample_labels, args.sample_steps, amp)
    timings["sample_teacher_s"] = time.perf_counter() - t0

    results = dict(
        config=dict(vars(args), tile=list(args.tile)),
        model=config,
        parameters=n_params,
        tokens=tokens,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        pretrain=pretrain,
        teacher=teacher_eval,
        arms={},
        timings=timings,
    )
    strip = [("teacher (dense)", teacher_sample[0])]
    stream = Stream(args, FINETUNE, device, cache=True)  # rendered once, the same clips for every arm
    # The calibrated arm's rules come from the first fine-tuning batches (the clips every arm trains on first).
    calibration_batches = [stream.batch(i)[:3] for i in range(2)]
    for loss in args.losses:
        for name in args.arms:
            arm = ARMS[name]
            t0 = time.perf_counter()
            student = make_arm(teacher, arm, args, calibration_batches, amp)
            run = train(
                student,
                stream,
                args.ft_steps,
                args.ft_lr,
                args.ft_warmup,
                loss,
                teacher,
                held_out,
                args.ft_eval_every,
                amp,
                f"{name} / {loss}",
                proj_lr=args.proj_lr,
            )
            probe = linear_branch_probe(student, held_out, amp)
            if probe is not None:
                run["linear_branch"] = probe
            x = sample(student, sample_noise, sample_labels, args.sample_steps, amp)
            run.update(sample=compare(x, teacher_sample), density=density(arm, args), seconds=time.perf_counter() - t0)
            if getattr(student, "calibration", None) is not None:
                run["calibration"] = student.calibration
                run["density"]["critical"] = student.calibration["average_density"]
            results["arms"].setdefault(name, {})[loss] = run
            strip.append((f"{name} / {loss}", x[0]))
            del student
            # After every arm, so that a run cut short (a device limit) keeps the arms it finished.
            write_results(args.out, results, strip, complete=False)
    timings["total_s"] = time.perf_counter() - start
    write_results(args.out, results, strip, complete=True)
    print(table(results))
    print(
        f"total {timings['total_s']:.0f} s (pre-training {timings['pretrain_s']:.0f} s); outputs in {args.out}",
        flush=True,
    )
    return results


if __name__ == "__main__":
    main()
