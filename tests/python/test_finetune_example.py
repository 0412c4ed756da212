"""examples/finetune_wan.py end to end on the CPU: a tiny random Wan, synthetic latents and text embeddings in the
documented on-disk format, a few steps with checkpoints, and a resumed run that ends where the uninterrupted one
does (skipped when diffusers is not installed)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")
from safetensors.torch import load_file, save_file  # noqa: E402  (a dependency of diffusers)

from sla.diffusers import wan_config  # noqa: E402

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


def test_finetune_rejects_bad_data(workspace):
    tmp, data, config = workspace
    example = load_example()
    save_file({"latents": torch.randn(4, 3, 8, 8)}, str(data / "broken.safetensors"))
    with pytest.raises(ValueError, match="text_embeds"):
        run(example, data, config, tmp / "out", "--max-steps", "4", "--batch-size", "1")  # one epoch: all 4 files
    with pytest.raises(SystemExit, match="no .safetensors"):
        run(example, tmp / "config.json", config, tmp / "out", "--max-steps", "1")


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
