"""bench/quality.py --smoke on the CPU: every code path of the quality experiment (pre-training with the plateau
check, the checkpoint and its reuse, every arm under both losses, sampling, the report files) on a tiny model, so
that a GPU run does not find a broken script. Checks outputs, not timing or quality (skipped without diffusers)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")
pytest.importorskip("matplotlib", reason="matplotlib is not installed")

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite_numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from finite_numbers(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from finite_numbers(value)
    elif isinstance(tree, float):
        yield tree


def test_clips_are_deterministic_per_index_and_move():
    data = load("quality_data")
    x, labels = data.make_clips([5, 9], seed=1, frames=4, height=16, width=16)
    again, _ = data.make_clips([9], seed=1, frames=4, height=16, width=16)
    assert x.shape == (2, 16, 4, 16, 16) and labels.shape == (2,)
    assert torch.equal(again[0], x[1])  # a clip depends on (seed, index) only, not on its batch
    assert torch.isfinite(x).all() and 0.3 < x.std() < 3
    assert (x[:, :, 1:] - x[:, :, :-1]).abs().mean() > 1e-3  # frames differ: motion
    other, _ = data.make_clips([5], seed=2, frames=4, height=16, width=16)
    assert not torch.equal(other[0], x[0])


def test_quality_smoke_writes_finite_results_and_reuses_the_checkpoint(tmp_path):
    quality = load("quality")
    out = tmp_path / "q"
    results = quality.main(["--smoke", "--out", str(out)])
    assert sorted(os.listdir(out)) == ["dense.safetensors", "losses.png", "quality.json", "samples.png"]
    for png in ("losses.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "quality.json").read_text())
    assert set(saved["arms"]) == set(quality.ARMS)
    for arm, per_loss in saved["arms"].items():
        assert set(per_loss) == {"distill", "diffusion"}, arm
        for loss, r in per_loss.items():
            assert r["steps"] == 2 and [c["step"] for c in r["curve"]] == [0, 1, 2], (arm, loss)
            assert set(r["curve"][-1]) == {"step", "diffusion", "teacher_mse"}
            assert r["sample"]["psnr_db"] > 0 and r["sample"]["rel_l2"] >= 0
    numbers = list(finite_numbers(saved))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert saved["pretrain"]["steps"] >= 4 and saved["pretrain"]["curve"][0]["step"] == 0
    # The SLA arms attend a fraction of the key blocks; the sparse-only arm's projection stayed at zero (it differs
    # from the SLA arm of the same topk only through training), the dense control distils to ~0.
    assert saved["arms"]["sla_global_0.05"]["distill"]["density"]["critical"] < 1
    assert saved["arms"]["dense"]["distill"]["curve"][0]["teacher_mse"] == 0
    assert saved["arms"]["sla_global_0.05"]["distill"]["curve"][0]["teacher_mse"] > 0
    assert results["arms"].keys() == saved["arms"].keys()
    assert saved["complete"] is True
    # The linear-branch probe: on every arm with SLA projections, none on the dense control. The sparse-only arm's
    # projections stayed at zero, so zeroing them changes nothing; the SLA arm's moved off zero.
    assert "linear_branch" not in saved["arms"]["dense"]["distill"]
    frozen = saved["arms"]["sparse_only_0.05"]["distill"]
    assert frozen["linear_branch"]["proj_weight_norm"] == 0
    end = {k: v for k, v in frozen["curve"][-1].items() if k != "step"}
    assert frozen["linear_branch"]["without_linear"] == end
    trained = saved["arms"]["sla_global_0.05"]["distill"]["linear_branch"]
    assert trained["proj_weight_norm"] > 0
    assert set(trained["without_linear"]) == {"diffusion", "teacher_mse"}
    assert "projection zeroed" in quality.table(saved)
    # The calibrated arm: per-head topk of every SLA layer, within the density of topk 0.05 (its budget).
    config = saved["config"]
    for loss in ("distill", "diffusion"):
        cal = saved["arms"]["sla_calibrated_0.05"][loss]["calibration"]
        assert cal["average_density"] <= cal["budget"] + 1e-9
        assert sorted(cal["topk_per_layer"]) == [f"blocks.{i}.attn1.processor" for i in range(config["layers"])]
        assert all(len(ks) == config["heads"] and all(0 < x <= 1 for x in ks) for ks in cal["topk_per_layer"].values())

    # A second run reuses the checkpoint (no pre-training) and reaches the same teacher.
    again = quality.main(["--smoke", "--out", str(out), "--arms", "dense", "--losses", "distill"])
    assert again["pretrain"]["steps"] == 0 and again["teacher"] == saved["teacher"]
    with pytest.raises(SystemExit, match="another configuration"):
        quality.main(
            [
                "--smoke",
                "--out",
                str(tmp_path / "other"),
                "--checkpoint",
                str(out / "dense.safetensors"),
                "--layers",
                "1",
                "--arms",
                "dense",
            ]
        )


def test_projection_learning_rate_gets_its_own_group():
    quality = load("quality")

    class Proc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_l = torch.nn.Linear(2, 2)

    model = torch.nn.ModuleDict(dict(attn=torch.nn.Linear(2, 2), processor=Proc(), frozen=torch.nn.Linear(2, 2)))
    model["frozen"].requires_grad_(False)
    proj = set(model["processor"].proj_l.parameters())
    opt = quality.make_optimizer(model, 1e-4, proj_lr=3e-3)
    assert [g["base_lr"] for g in opt.param_groups] == [1e-4, 3e-3]
    assert set(opt.param_groups[1]["params"]) == proj
    assert set(opt.param_groups[0]["params"]) == set(model["attn"].parameters())
    # Without proj_lr every trainable weight shares one group, the projections included.
    opt = quality.make_optimizer(model, 1e-4)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4


def test_linear_branch_probe_switches_the_projections_off_and_restores_them():
    quality = load("quality")

    class Proc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_l = torch.nn.Linear(2, 2)

    model = torch.nn.ModuleDict(dict(a=Proc(), b=Proc()))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class HeldOut:
        seen = []

        def evaluate(self, m, amp):
            # The probe's evaluation sees every projection at zero.
            self.seen.append(all(float(p.abs().sum()) == 0 for p in m.parameters()))
            return dict(diffusion=1.0, teacher_mse=2.0)

    held = HeldOut()
    probe = quality.linear_branch_probe(model, held, contextlib.nullcontext)
    assert held.seen == [True]
    assert probe["without_linear"] == dict(diffusion=1.0, teacher_mse=2.0)
    expected = sum(torch.linalg.matrix_norm(before[f"{n}.proj_l.weight"]).item() for n in "ab") / 2
    assert probe["proj_weight_norm"] == pytest.approx(expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert quality.linear_branch_probe(torch.nn.Linear(2, 2), held, contextlib.nullcontext) is None


def test_a_run_cut_short_keeps_the_arms_it_finished(tmp_path, monkeypatch):
    quality = load("quality")
    out = tmp_path / "q"
    real_sample = quality.sample
    calls = []

    def sample_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the teacher's samples, the first arm's, then the second arm is cut short
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(quality, "sample", sample_then_stop)
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--smoke", "--out", str(out), "--arms", "dense,sparse_only_0.05", "--losses", "distill"])
    saved = json.loads((out / "quality.json").read_text())
    assert saved["complete"] is False and list(saved["arms"]) == ["dense"]
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
