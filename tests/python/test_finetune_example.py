"""examples/finetune_wan.py end to end on the CPU: a tiny random Wan, synthetic latents and text embeddings in the
documented on-disk format, a few steps with checkpoints, and a resumed run that ends where the uninterrupted one
does (skipped when diffusers is not installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")
from safetensors.torch import load_file, save_file  # noqa: E402  (a dependency of diffusers)

from sla.diffusers import wan_config  # noqa: E402

from conftest import files_in  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "finetune_wan.py")


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_wan", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def workspace(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):  # 4 x 3 x 8 x 8 latents = 48 tokens; captions of different lengths
        save_file(
            {"latents": torch.randn(4, 3, 8, 8), "text_embeds": torch.randn(5 + i, 32)},
            str(data / f"{i:06d}.safetensors"),
        )
    config = tmp_path / "config.json"
    config.write_text(json.dumps(wan_config("tiny")))
    return tmp_path, data, config


def run(example, data, config, out, *extra):
    return example.main(
        [
            "--data",
            str(data),
            "--config",
            str(config),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--block-q",
            "16",
            "--block-k",
            "16",
            "--topk",
            "0.5",
            "--text-len",
            "8",
            "--lr",
            "1e-3",
            "--seed",
            "3",
            *extra,
        ]
    )


def test_finetune_saves_resumes_and_matches_an_uninterrupted_run(workspace):
    tmp, data, config = workspace
    example = load_example()
    loss = run(example, data, config, tmp / "full", "--max-steps", "4", "--save-every", "2")
    assert loss == loss and loss > 0  # finite
    assert sorted(os.listdir(tmp / "full")) == ["checkpoint-2", "checkpoint-4"]
    ckpt = tmp / "full" / "checkpoint-4"
    assert sorted(os.listdir(ckpt)) == ["config.json", "model.safetensors", "optimizer.pt", "state.json"]
    weights = load_file(str(ckpt / "model.safetensors"))
    start = load_file(str(tmp / "full" / "checkpoint-2" / "model.safetensors"))
    proj = "blocks.1.attn1.processor.proj_l.weight"
    assert weights[proj].dtype == torch.float32 and weights[proj].abs().sum() > 0  # trained from zero
    assert not torch.equal(weights["blocks.0.attn1.to_q.weight"], start["blocks.0.attn1.to_q.weight"])

    # Interrupted after 2 steps, resumed to 4: the same weights as the uninterrupted run.
    run(example, data, config, tmp / "part", "--max-steps", "2", "--save-every", "2")
    run(example, data, config, tmp / "part", "--max-steps", "4", "--save-every", "2", "--resume", "latest")
    resumed = load_file(str(tmp / "part" / "checkpoint-4" / "model.safetensors"))
    assert set(resumed) == set(weights)
    for key in weights:
        torch.testing.assert_close(resumed[key], weights[key], rtol=0, atol=0, msg=key)
    assert json.loads((tmp / "part" / "checkpoint-4" / "state.json").read_text())["step"] == 4


def test_resume_refuses_a_target_behind_the_checkpoint(workspace):
    tmp, data, config = workspace
    example = load_example()
    out = tmp / "out"
    run(example, data, config, out, "--max-steps", "4", "--save-every", "2")
    before = {name: files_in(out / name) for name in os.listdir(out)}
    # It used to write checkpoint-3 holding the step-4 weights.
    with pytest.raises(
        SystemExit,
        match=r"^--max-steps 3 is behind the checkpoint to resume \('.*checkpoint-4' holds step 4\): pass "
        r"--max-steps >= 4 \(the total number of steps, not the number still to run\)$",
    ):
        run(example, data, config, out, "--max-steps", "3", "--resume", "latest")
    with pytest.raises(SystemExit, match=r"^--max-steps 1 is behind the checkpoint to resume \('.*checkpoint-2' holds"):
        run(example, data, config, out, "--max-steps", "1", "--resume", str(out / "checkpoint-2"))
    assert {name: files_in(out / name) for name in os.listdir(out)} == before
    # Resuming at the target trains nothing and rewrites nothing; resuming checkpoint-2 to 4 replaces checkpoint-4
    # (atomically: no temporary folder is left beside it) with the same weights.
    run(example, data, config, out, "--max-steps", "4", "--resume", "latest")
    assert {name: files_in(out / name) for name in os.listdir(out)} == before
    run(example, data, config, out, "--max-steps", "4", "--save-every", "2", "--resume", str(out / "checkpoint-2"))
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "checkpoint-4" / "state.json").read_text())["step"] == 4
    assert files_in(out / "checkpoint-4")["model.safetensors"] == before["checkpoint-4"]["model.safetensors"]
    # A checkpoint whose optimizer holds every parameter is not resumed with the SLA projections alone.
    before = {name: files_in(out / name) for name in os.listdir(out)}
    with pytest.raises(
        SystemExit,
        match=r"^--train-params sla: the checkpoint to resume \('.*checkpoint-4'\) was trained with --train-params "
        r"all \(its optimizer holds other parameters\); pass --train-params all$",
    ):
        run(example, data, config, out, "--max-steps", "6", "--train-params", "sla", "--resume", "latest")
    assert {name: files_in(out / name) for name in os.listdir(out)} == before


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "0"], "argument --batch-size: expected an int >= 1, got 0"),
        (["--max-steps", "0"], "argument --max-steps: expected an int >= 1, got 0"),
        (["--max-steps", "2.5"], "argument --max-steps: expected an int >= 1, got '2.5'"),
        (["--save-every", "-1"], "argument --save-every: expected an int >= 0, got -1"),
        (["--flow-shift", "0"], "argument --flow-shift: expected a finite number > 0, got 0.0"),
        (["--flow-shift", "nan"], "argument --flow-shift: expected a finite number > 0, got nan"),
        (["--grad-clip", "-1"], "argument --grad-clip: expected a finite number >= 0, got -1.0"),
        (["--lr", "inf"], "argument --lr: expected a finite number >= 0, got inf"),
        (["--lr", "-0.5"], "argument --lr: expected a finite number >= 0, got -0.5"),
        (["--topk", "2"], r"argument --topk: expected a number in \(0, 1\], got 2.0"),
        (["--block-q", "100"], "argument --block-q: expected 16, 32, 64 or 128, got '100'"),
        (["--text-len", "0"], "argument --text-len: expected an int >= 1, got 0"),
        (["--loss", "l1"], r"argument --loss: invalid choice: 'l1' \(choose from '?distill'?, '?diffusion'?\)"),
        (
            ["--train-params", "lora"],
            r"argument --train-params: invalid choice: 'lora' \(choose from '?all'?, '?sla'?\)",
        ),
        (
            ["--teacher-dtype", "fp16"],
            r"argument --teacher-dtype: invalid choice: 'fp16' \(choose from '?bf16'?, '?fp32'?\)",
        ),
        (["--eval-every", "-1"], "argument --eval-every: expected an int >= 0, got -1"),
        (["--eval-every", "x"], "argument --eval-every: expected an int >= 0, got 'x'"),
        (["--eval-data", "missing"], "argument --eval-data: expected a folder, got 'missing'"),
    ],
)
def test_finetune_flags_are_checked_before_any_work(workspace, capsys, flags, message):
    tmp, data, config = workspace
    example = load_example()
    with pytest.raises(SystemExit) as exit_info:
        run(example, data, config, tmp / "out", *flags)
    assert exit_info.value.code == 2
    assert re.search(rf"error: {message}$", capsys.readouterr().err.strip())
    assert not (tmp / "out").exists()


def test_finetune_output_folder_is_checked_before_any_work(workspace, capsys):
    tmp, data, config = workspace
    example = load_example()
    before = files_in(data)
    for out, message in (
        (data, rf"argument --output-dir: '{data}' is also an input of this call; writing it would destroy the input"),
        (config, rf"argument --output-dir: '{config}' is also an input of this call"),
        (tmp / "config.json" / "out", r"argument --output-dir: cannot create folder .*: .*config.json' is a file"),
    ):
        with pytest.raises(SystemExit):
            run(example, data, config, out, "--max-steps", "1")
        assert re.search(message, capsys.readouterr().err)
    (tmp / "held").mkdir()
    with pytest.raises(SystemExit):
        run(example, data, config, tmp / "held", "--eval-data", str(tmp / "held"), "--max-steps", "1")
    assert re.search(r"argument --output-dir: '.*held' is also an input of this call", capsys.readouterr().err)
    assert files_in(data) == before
    with pytest.raises(SystemExit, match=r"^--eval-data: no .safetensors files in '.*held'"):
        run(example, data, config, tmp / "out", "--eval-data", str(tmp / "held"))
    with pytest.raises(SystemExit, match=r"^--batch-size 4: --data has only 3 examples$"):
        run(example, data, config, tmp / "out", "--batch-size", "4")
    (tmp / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match=rf"^--config: cannot read '{tmp / 'bad.json'}': Expecting property name"):
        run(example, data, tmp / "bad.json", tmp / "out")
    assert not (tmp / "out").exists()


def test_finetune_rejects_bad_data(workspace, capsys):
    tmp, data, config = workspace
    example = load_example()
    save_file({"latents": torch.randn(4, 3, 8, 8)}, str(data / "broken.safetensors"))
    with pytest.raises(ValueError, match="text_embeds"):
        run(example, data, config, tmp / "out", "--max-steps", "4", "--batch-size", "1")  # one epoch: all 4 files
    (tmp / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .safetensors"):
        run(example, tmp / "empty", config, tmp / "out", "--max-steps", "1")
    with pytest.raises(SystemExit) as exit_info:
        run(example, tmp / "config.json", config, tmp / "out", "--max-steps", "1")
    assert exit_info.value.code == 2 and "argument --data: expected a folder" in capsys.readouterr().err


def test_distillation_targets_the_frozen_dense_teacher(workspace):
    # topk 1 with zero projections is dense attention (test_diffusers.py), so at float32 the student predicts what
    # the dense teacher predicts: the distillation loss is rounding only, while the diffusion loss of the same model
    # on the same inputs is of order one. (lr 0: Adam would turn the rounding-size gradients into lr-size steps.)
    # Held-out evaluation at steps 0, 2, 4 lands in eval.json.
    tmp, data, config = workspace
    example = load_example()
    exact = ("--topk", "1", "--mixed-precision", "no", "--max-steps", "4", "--save-every", "0", "--lr", "0")
    distill = run(example, data, config, tmp / "d", *exact, "--eval-data", str(data), "--eval-every", "2")
    diffusion = run(example, data, config, tmp / "p", *exact, "--loss", "diffusion")
    assert 0 <= distill < 1e-9 and diffusion > 0.1
    history = json.loads((tmp / "d" / "eval.json").read_text())
    assert [e["step"] for e in history] == [0, 2, 4]
    assert all(e["teacher_mse"] < 1e-9 and 0.1 < e["diffusion"] < 10 for e in history)

    # A sparse student starts away from its teacher: the evaluation sees the difference.
    run(
        example,
        data,
        config,
        tmp / "s",
        "--topk",
        "0.3",
        "--mixed-precision",
        "no",
        "--max-steps",
        "2",
        "--save-every",
        "0",
        "--eval-data",
        str(data),
        "--eval-every",
        "2",
    )
    first, last = json.loads((tmp / "s" / "eval.json").read_text())
    assert (first["step"], last["step"]) == (0, 2) and first["teacher_mse"] > 1e-6 and last["teacher_mse"] > 0


def test_sla_parameters_only(workspace):
    tmp, data, config = workspace
    example = load_example()
    run(example, data, config, tmp / "o", "--train-params", "sla", "--max-steps", "2", "--save-every", "1")
    before = load_file(str(tmp / "o" / "checkpoint-1" / "model.safetensors"))
    after = load_file(str(tmp / "o" / "checkpoint-2" / "model.safetensors"))
    trained = [k for k in after if not torch.equal(after[k], before[k])]
    assert trained and all(".processor.proj_l." in k for k in trained)
    assert sorted(trained) == sorted(k for k in after if ".processor.proj_l." in k)
