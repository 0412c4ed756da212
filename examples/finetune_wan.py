#!/usr/bin/env python3
"""Fine-tune a diffusers Wan transformer with SLA (sparse-linear attention) on pre-computed latents.

The recipe's defaults (SLA paper / TurboDiffusion / SpargeAttention2): every parameter trainable (the SLA
projections start at zero, so step 0 is the sparse model), topk 0.1, 128 x 64 blocks, bf16 autocast over fp32
weights, gradient checkpointing, Wan's flow-matching inputs: x_t = (1 - s) x_0 + s e with s drawn from a shifted
uniform law at timestep 1000 s, and teacher distillation (--loss distill, the default): the target is the velocity
that a frozen copy of the starting model with dense attention predicts for the same x_t and timestep, mean squared
error in float32. Fine-tuning data rarely matches the pre-training data, and the plain diffusion loss on it moves
even a dense model away from what it was (SpargeAttention2's ablation); distillation only teaches the SLA model to
do what the dense model did. --loss diffusion trains on Wan's velocity target e - x_0 instead (the SLA paper's
recipe). The teacher costs one forward pass per step (no gradients: about a quarter more compute with gradient
checkpointing) and its weights (--teacher-dtype bf16, default with bf16 autocast: 2 bytes per parameter, 2.8 GB for
Wan2.1-1.3B, 28 GB for 14B; diffusers' fp32 modules stay fp32). --train-params sla trains the SLA projections
alone (everything else frozen; TurboDiffusion's maintainers report that this is not enough, so "all" is the
default).

Evaluation: --eval-data DIR (latents and text embeddings in the format below, held out from --data) every
--eval-every steps and at step 0: the MSE of the model's velocity to the teacher's and the diffusion loss, at noise
and timesteps fixed by --seed; written to --output-dir/eval.json (a list of {"step", "teacher_mse", "diffusion"}).

Data: a folder of .safetensors files (one example each), made with the VAE and text encoder you train with:
    latents      (C, F, H, W)  the VAE latents of one video (Wan2.1: C = 16, F = (frames - 1) / 4 + 1, H, W = size / 8)
    text_embeds  (L, D)        the text encoder's output for its caption (Wan2.1: umT5, D = 4096, L <= 512)
e.g. safetensors.torch.save_file({"latents": z, "text_embeds": e}, "data/000001.safetensors"). Text embeddings are
zero-padded to --text-len tokens as Wan does; examples in one batch must have the same latent shape.

Model: --pretrained DIR_OR_ID (a diffusers Wan repository, its "transformer" subfolder, or the folder itself) or
--config CONFIG.json (random weights; what the tests use). --turbodiffusion CKPT starts from a TurboDiffusion
checkpoint instead (sla.diffusers.load_turbodiffusion).

Output: --output-dir/checkpoint-<step>/ (named by the step whose weights it holds; written to a temporary folder and
renamed into place) with model.safetensors (the whole state dict, SLA projections included as
blocks.<i>.attn1.processor.proj_l.*), optimizer.pt, config.json (the transformer's) and state.json; --resume
latest|DIR continues from one up to --max-steps, the total (a checkpoint past it is refused, and so is one saved
with another --train-params). Every flag and the output folder are checked before the model is built. The run is
deterministic given --seed: data order and noise depend on the seed and the step only, so a resumed run takes the
same steps as an uninterrupted one.

    python examples/finetune_wan.py --pretrained Wan-AI/Wan2.1-T2V-1.3B-Diffusers --data data/ --output-dir out/ \
        --max-steps 2000 --save-every 500
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time

import torch

import sla
import sla.atomic

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


# ---- data --------------------------------------------------------------------------------------------------------

class LatentDataset(torch.utils.data.Dataset):
    """The folder of .safetensors examples described in the module docstring."""

    def __init__(self, folder: str, text_len: int, flag: str = "--data"):
        self.files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not self.files:
            raise SystemExit(f"{flag}: no .safetensors files in {folder!r} (see the docstring for the format)")
        self.text_len = text_len

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        from safetensors.torch import load_file

        path = self.files[index]
        item = load_file(path)
        for key, dims in (("latents", 4), ("text_embeds", 2)):
            if key not in item or item[key].dim() != dims:
                raise ValueError(f"{path}: expected a {dims}-d tensor {key!r}; has "
                                 f"{ {k: tuple(v.shape) for k, v in item.items()} }")
        text = item["text_embeds"].float()
        if text.shape[0] > self.text_len:
            raise ValueError(f"{path}: text_embeds has {text.shape[0]} tokens, more than --text-len {self.text_len}")
        padded = text.new_zeros(self.text_len, text.shape[1])
        padded[: text.shape[0]] = text
        return item["latents"].float(), padded


def batches(dataset, batch_size: int, seed: int, start_step: int):
    """Batches in a per-epoch order that depends on (seed, epoch) only, from step `start_step` on."""
    per_epoch = max(1, len(dataset) // batch_size)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7919 * epoch))
        idx = order[offset * batch_size: (offset + 1) * batch_size].tolist()
        items = [dataset[i] for i in idx]
        shapes = {tuple(x[0].shape) for x in items}
        if len(shapes) > 1:
            raise ValueError(f"a batch mixes latent shapes {sorted(shapes)}: use --batch-size 1 or same-size videos")
        yield step, torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items])
        step += 1


# ---- model -------------------------------------------------------------------------------------------------------

def build_transformer(args):
    from diffusers import WanTransformer3DModel

    if args.config:
        return WanTransformer3DModel.from_config(read_json(args.config, "--config"))
    source = args.pretrained
    if os.path.isdir(os.path.join(source, "transformer")) or not os.path.isdir(source):
        return WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=torch.float32)
    return WanTransformer3DModel.from_pretrained(source, torch_dtype=torch.float32)


def flow_matching_inputs(latents, shift: float, generator):
    """Wan's flow matching: sigma from a shifted uniform law, x_t = (1 - sigma) x_0 + sigma * noise, target
    velocity noise - x_0, timestep 1000 * sigma."""
    b = latents.shape[0]
    u = torch.rand(b, generator=generator)
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn(latents.shape, generator=generator)
    s = sigma.view(b, 1, 1, 1, 1)
    return (1 - s) * latents + s * noise, noise - latents, 1000.0 * sigma


def make_teacher(transformer, dtype):
    """The frozen dense copy of the starting model: the same weights, diffusers' dense attention, no gradients.
    bfloat16 halves its memory; the modules diffusers keeps in float32 (norms, time embedder, modulation tables)
    stay float32, as from_pretrained(torch_dtype=torch.bfloat16) leaves them."""
    import copy

    import sla.diffusers as sd

    teacher = sd.disable_sla(copy.deepcopy(transformer)).eval().requires_grad_(False)
    if dtype != torch.float32:
        teacher.to(dtype)
        keep = set(getattr(teacher, "_keep_in_fp32_modules", None) or [])
        for name, tensor in [*teacher.named_parameters(), *teacher.named_buffers()]:
            if keep.intersection(name.split(".")) and tensor.is_floating_point():
                tensor.data = tensor.data.float()
    return teacher


class HeldOut:
    """Held-out latents with fixed noise and timesteps (from --seed), and the teacher's predictions on them, kept
    on the CPU; evaluate() gives the model's MSE to the teacher and its diffusion loss on them."""

    def __init__(self, dataset, args, teacher, device, autocast):
        gen = torch.Generator().manual_seed(args.seed + 99991)
        self.items = []
        for index in range(len(dataset)):
            latents, text = dataset[index]
            x_t, target, timestep = flow_matching_inputs(latents[None], args.flow_shift, gen)
            with torch.no_grad(), autocast:
                pred = teacher(x_t.to(device), timestep.to(device), text[None].to(device), return_dict=False)[0]
            self.items.append((x_t, timestep, text[None], target, pred.float().cpu()))
        self.device, self.autocast = device, autocast

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        was_training = model.training
        model.eval()
        teacher_mse = diffusion = 0.0
        for x_t, timestep, text, target, teacher_pred in self.items:
            with self.autocast:
                pred = model(x_t.to(self.device), timestep.to(self.device), text.to(self.device), return_dict=False)[0]
            pred = pred.float().cpu()
            teacher_mse += torch.mean((pred - teacher_pred) ** 2).item() / len(self.items)
            diffusion += torch.mean((pred - target) ** 2).item() / len(self.items)
        model.train(was_training)
        return {"teacher_mse": teacher_mse, "diffusion": diffusion}


def record_eval(output_dir, step, result):
    """Adds {"step", **result} to output_dir/eval.json (dropping entries past `step`, which a resumed run
    recomputes), written to a temporary file and renamed."""
    path = os.path.join(output_dir, "eval.json")
    history = read_json(path, "eval.json") if os.path.exists(path) else []
    if not isinstance(history, list) or not all(isinstance(e, dict) and type(e.get("step")) is int for e in history):
        raise SystemExit(f"eval.json: {path!r} is not a list of {{'step': int, ...}}: not written by this script?")
    history = [e for e in history if e["step"] < step]
    history.append({"step": step, **result})
    os.makedirs(output_dir, exist_ok=True)
    sla.atomic.write_text(path, json.dumps(history, indent=1))


# ---- checkpoints -------------------------------------------------------------------------------------------------

def checkpoint_folder(output_dir: str, step: int) -> str:
    """checkpoint-<step>: a checkpoint is named by the step whose weights it holds."""
    return os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")


def save_checkpoint(output_dir, transformer, optimizer, step, args):
    from safetensors.torch import save_file

    # Written into a temporary folder beside it and renamed into place: a checkpoint is complete or absent, never
    # half-written, and an older one of the same name is replaced only by a complete one.
    os.makedirs(output_dir, exist_ok=True)
    with sla.atomic.atomic_folder(checkpoint_folder(output_dir, step)) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in transformer.state_dict().items()}
        save_file(state, os.path.join(tmp, "model.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(dict(transformer.config), f, indent=2, default=list)
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, "args": vars(args)}, f, indent=2)


def find_resume(resume: str, output_dir: str):
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, "state.json")):
            raise SystemExit(f"--resume: {resume!r} is not a checkpoint folder (no state.json)")
        return resume
    steps = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        match = CHECKPOINT_NAME.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(match[1]))
    return checkpoint_folder(output_dir, max(steps)) if steps else None


def read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise SystemExit(f"{what}: cannot read {path!r}: {exc}") from None


def checkpoint_step(folder: str, train_params: str = "all") -> int:
    """The step a checkpoint holds (its state.json), read before anything is built; a checkpoint whose optimizer
    holds other parameters (another --train-params) is refused."""
    path = os.path.join(folder, "state.json")
    state = read_json(path, "--resume") if os.path.isfile(path) else None
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SystemExit(f"--resume: {path!r} holds no step (an int >= 0): not a checkpoint of this script?")
    saved = state.get("args")
    saved = saved.get("train_params", "all") if isinstance(saved, dict) else "all"
    if saved != train_params:
        raise SystemExit(
            f"--train-params {train_params}: the checkpoint to resume ({folder!r}) was trained with --train-params "
            f"{saved} (its optimizer holds other parameters); pass --train-params {saved}"
        )
    return step


def load_checkpoint(folder, transformer, optimizer):
    from safetensors.torch import load_file

    transformer.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location="cpu",
                                         weights_only=True))


# ---- progress ----------------------------------------------------------------------------------------------------

class Progress:
    """tqdm when it is installed, else a line every --log-every steps."""

    def __init__(self, total: int, initial: int, log_every: int):
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="fine-tune", dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.total, self.log_every, self.start = total, log_every, time.time()

    def update(self, step: int, loss: float):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif step % self.log_every == 0 or step == self.total:
            print(f"step {step}/{self.total} loss {loss:.4f} ({time.time() - self.start:.0f} s)", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---- training ----------------------------------------------------------------------------------------------------

def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float, low_open: bool, expected: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def _block_size(text: str) -> int:
    if text not in ("16", "32", "64", "128"):
        raise argparse.ArgumentTypeError(f"expected 16, 32, 64 or 128, got {text!r}")
    return int(text)


def parse_args(argv=None):
    """The flags, each checked when parsed, and the output folder checked before any work (argparse's error: the
    message names the flag, exit status 2)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    positive = _float_in(0.0, math.inf, True, "a finite number > 0")
    non_negative = _float_in(0.0, math.inf, False, "a finite number >= 0")
    p.add_argument("--data", required=True, help="folder of .safetensors examples (latents, text_embeds)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--pretrained", help="diffusers Wan repository or folder (its transformer is fine-tuned)")
    p.add_argument("--config", help="WanTransformer3DModel config.json: random weights")
    p.add_argument("--turbodiffusion", help="start from this TurboDiffusion checkpoint (.pth / .safetensors)")
    p.add_argument("--topk", type=_float_in(0.0, 1.0, True, "a number in (0, 1]"), default=0.1)
    p.add_argument("--block-q", type=_block_size, default=128)
    p.add_argument("--block-k", type=_block_size, default=64)
    p.add_argument("--lr", type=non_negative, default=1e-5, help="0: the weights stay as they are (a check)")
    p.add_argument("--weight-decay", type=non_negative, default=0.0)
    p.add_argument("--batch-size", type=_int_at_least(1), default=1)
    p.add_argument("--max-steps", type=_int_at_least(1), default=1000, help="the step to train to (resumed: in total)")
    p.add_argument("--save-every", type=_int_at_least(0), default=500, help="0: only the final checkpoint")
    p.add_argument("--log-every", type=_int_at_least(1), default=10)
    p.add_argument("--flow-shift", type=positive, default=3.0, help="sigma shift (Wan: 3 for 480p, 5 for 720p)")
    p.add_argument("--text-len", type=_int_at_least(1), default=512)
    p.add_argument("--mixed-precision", choices=("bf16", "no"), default="bf16")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--grad-clip", type=non_negative, default=1.0, help="0: no clipping")
    p.add_argument("--loss", choices=("distill", "diffusion"), default="distill",
                   help="distill: MSE to a frozen dense copy's velocity (default); diffusion: Wan's velocity target")
    p.add_argument("--teacher-dtype", choices=("bf16", "fp32"), default=None,
                   help="the teacher's weights (default bf16 with --mixed-precision bf16, else fp32)")
    p.add_argument("--train-params", choices=("all", "sla"), default="all",
                   help="all: full-parameter fine-tuning (default); sla: the SLA projections alone")
    p.add_argument("--eval-data", help="folder of held-out .safetensors examples, evaluated every --eval-every steps")
    p.add_argument("--eval-every", type=_int_at_least(0), default=100, help="0: only at step 0")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    args = p.parse_args(argv)
    if not args.config and not args.pretrained:
        p.error("give --pretrained DIR_OR_ID or --config CONFIG.json")
    if not os.path.isdir(args.data):
        p.error(f"argument --data: expected a folder, got {args.data!r}")
    if args.eval_data is not None and not os.path.isdir(args.eval_data):
        p.error(f"argument --eval-data: expected a folder, got {args.eval_data!r}")
    inputs = [args.data, args.eval_data, args.config, args.turbodiffusion]
    if args.pretrained and os.path.exists(args.pretrained):
        inputs.append(args.pretrained)
    try:  # before the model is built: an output folder that cannot be written fails now, not at the first save
        sla.atomic.check_output_path("--output-dir", args.output_dir, inputs=inputs, folder=True)
    except (OSError, ValueError) as exc:
        p.error(f"argument {exc}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import sla.diffusers as sd

    # What can be refused is refused before the model is built: the checkpoint to resume and the data.
    start = 0  # the step training starts from (that of the checkpoint resumed)
    resume = find_resume(args.resume, args.output_dir) if args.resume else None
    if args.resume and resume is None:
        print(f"--resume latest: no checkpoint in {args.output_dir!r}; starting from step 0", file=sys.stderr)
    if resume:
        start = checkpoint_step(resume, args.train_params)
        if start > args.max_steps:
            raise SystemExit(
                f"--max-steps {args.max_steps} is behind the checkpoint to resume ({resume!r} holds step {start}): "
                f"pass --max-steps >= {start} (the total number of steps, not the number still to run)"
            )
    dataset = LatentDataset(args.data, args.text_len)
    if args.batch_size > len(dataset):
        raise SystemExit(f"--batch-size {args.batch_size}: --data has only {len(dataset)} examples")
    eval_dataset = LatentDataset(args.eval_data, args.text_len, "--eval-data") if args.eval_data else None

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    transformer = build_transformer(args)
    if args.turbodiffusion:
        sd.load_turbodiffusion(transformer, args.turbodiffusion, topk=args.topk, block_q=args.block_q,
                               block_k=args.block_k)
    sd.enable_sla(transformer, topk=args.topk, block_q=args.block_q, block_k=args.block_k)
    transformer.to(device).train()
    # Made before a resumed checkpoint is loaded: the teacher is always the starting model.
    teacher = None
    if args.loss == "distill" or args.eval_data:
        teacher_dtype = args.teacher_dtype or ("bf16" if args.mixed_precision == "bf16" else "fp32")
        teacher = make_teacher(transformer, torch.bfloat16 if teacher_dtype == "bf16" else torch.float32)
    transformer.requires_grad_(args.train_params == "all")  # proj_l stays fp32
    for processor in sd.sla_processors(transformer).values():
        processor.proj_l.requires_grad_(True)
    if not args.no_gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    if resume:
        load_checkpoint(resume, transformer, optimizer)
        print(f"resumed from {resume} at step {start}", file=sys.stderr)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")
    held_out = HeldOut(eval_dataset, args, teacher, device, autocast) if eval_dataset is not None else None
    if held_out is not None and start == 0:
        record_eval(args.output_dir, 0, held_out.evaluate(transformer))
    progress = Progress(args.max_steps, start, args.log_every)
    loss_value = math.nan
    done = start  # steps whose updates the weights hold
    for step, latents, text in batches(dataset, args.batch_size, args.seed, start):
        if step >= args.max_steps:
            break
        noise_gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # noise depends on (seed, step)
        x_t, target, timestep = flow_matching_inputs(latents, args.flow_shift, noise_gen)
        x_t, target, timestep, text = (t.to(device) for t in (x_t, target, timestep, text))
        if args.loss == "distill":  # the dense teacher's velocity on the same noisy latents and timestep
            with torch.no_grad(), autocast:
                target = teacher(x_t, timestep, text, return_dict=False)[0]
        with autocast:
            pred = transformer(x_t, timestep, text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"step {step + 1}: loss is {loss_value}")
        done = step + 1
        progress.update(done, loss_value)
        if held_out is not None and args.eval_every > 0 and done % args.eval_every == 0:
            record_eval(args.output_dir, done, held_out.evaluate(transformer))
        if args.save_every > 0 and done % args.save_every == 0:
            save_checkpoint(args.output_dir, transformer, optimizer, done, args)
    progress.close()
    if not os.path.isdir(checkpoint_folder(args.output_dir, done)):
        save_checkpoint(args.output_dir, transformer, optimizer, done, args)
    return loss_value


if __name__ == "__main__":
    main()
