"""Calibration of a diffusers Wan transformer, end to end on the CPU (docs/PYTHON.md, "Calibrating a Wan
transformer"): enable_sla, record a few denoising steps, calibrate, save, apply the file to a fresh model by layer
name, and run it with the calibrated per-head rules. Skipped without diffusers."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")

from diffusers import WanTransformer3DModel  # noqa: E402

import sla  # noqa: E402
import sla.diffusers as sd  # noqa: E402

BLOCKS = dict(block_q=16, block_k=16)  # 48 tokens: 3 x 3 blocks
NAMES = ["blocks.0.attn1.processor", "blocks.1.attn1.processor"]


def denoising_steps(model, latents, text, timesteps):
    with torch.no_grad():
        for t in timesteps:
            model(latents, torch.tensor([t]), text)


@pytest.mark.parametrize("rule", ["top_p", "topk"])
def test_wan_transformer_calibrates_and_runs_per_head_rules(tmp_path, rule):
    torch.manual_seed(0)
    dense = WanTransformer3DModel(**sd.wan_config("tiny")).double()
    latents = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(1, 7, 32, dtype=torch.float64)

    model = sd.enable_sla(copy.deepcopy(dense), topk=0.5, **BLOCKS)
    with sla.record(model) as rec:
        denoising_steps(model, latents, text, (900.0, 500.0, 100.0))
    assert sorted(rec.samples) == NAMES
    assert all(len(rec.samples[n]) == 3 and rec.samples[n][0][0].shape == (1, 2, 48, 16) for n in NAMES)
    assert all(p.recorder is None for p in sd.sla_processors(model).values())

    cal = sla.calibrate(rec, rule=rule, quality=0.9, progress=False, rows_per_head=48, **BLOCKS)
    path = tmp_path / "wan_rules.json"
    cal.save(str(path))
    rules = sla.load_rules(str(path))
    assert sorted(rules) == NAMES and all(r.heads == 2 for r in rules.values())  # one value per head

    fresh = sd.enable_sla(copy.deepcopy(dense), topk=0.5, record_block_map=True, **BLOCKS)
    assert sla.apply_rules(fresh, str(path)) == 2
    processors = sd.sla_processors(fresh)
    for name in NAMES:
        assert processors[name].rule == rules[name]
        assert processors[name].topk == rules[name].topk and processors[name].top_p == rules[name].top_p

    # The calibrated rules are the ones that run: each layer's map is the library's map of its q, k under its rule.
    with sla.record(fresh) as seen:
        denoising_steps(fresh, latents, text, (500.0,))
    for name in NAMES:
        q, k, _ = seen.samples[name][0]
        want = sla.block_map(q.double(), k.double(), rule=rules[name], with_inverse=False, **BLOCKS)
        used = processors[name].last_block_map
        assert torch.equal(used.count, want.count) and torch.equal(used.lut, want.lut), name
    # And the whole model runs with them, with gradients (training with calibrated rules).
    out = fresh(latents, torch.tensor([500.0]), text).sample
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(p.proj_l.weight.grad is not None for p in processors.values())
