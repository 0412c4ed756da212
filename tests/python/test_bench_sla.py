"""bench/bench_sla.py --smoke: the layer benchmark's code paths (both variants, forward and forward+backward, the
negligible fractions, the adaptive rules and the 3D tiles, the markdown table and the JSON) on tiny shapes on the
CPU, so that a GPU run does not find a broken script. Timings on a shared CPU are noise: only their presence and
sign are checked, never a ratio."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys

import pytest
import torch


def load_bench(monkeypatch):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench_sla.py")
    spec = importlib.util.spec_from_file_location("bench_sla", path)
    bench = importlib.util.module_from_spec(spec)
    # dataclasses resolve the script's string annotations through sys.modules: register it while the test runs.
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    return bench


def test_bench_sla_smoke_runs_on_the_cpu(tmp_path, capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--negligible", "0,0.2", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert "not cuDNN" in doc["dense"] and doc["iters"] >= 2 and doc["warmup"] == 1
    rows = doc["results"]
    assert {r["variant"] for r in rows} == {"global", "complement"}
    assert {r["shape"] for r in rows} == set(bench.SMOKE_SHAPES)
    for r in rows:
        assert r["error"] is None, r
        for key in ("map_ms", "fwd_ms", "fwdbwd_ms", "cudnn_fwd_ms", "cudnn_fwdbwd_ms"):
            assert r[key] > 0, (key, r)
        for base, ours in (("cudnn_fwd_ms", "fwd_ms"), ("cudnn_fwdbwd_ms", "fwdbwd_ms")):
            speedup = r[base] / r[ours]
            assert math.isfinite(speedup) and speedup > 0, r
        assert r["dense_flops"] > 0 and r["executed_fwd_flops"] > 0 and r["executed_fwdbwd_flops"] > 0
        assert r["peak_gib"] is None  # measured on the GPU only
    # The global variant has no negligible blocks: one row per case, k_l null.
    global_rows = [r for r in rows if r["variant"] == "global"]
    assert global_rows and all(r["negligible"] is None for r in global_rows)
    assert printed.err.count("the global variant has no negligible blocks") == 1
    # The complement variant: every case (shape, topk, blocks) of the global variant at both k_l, adjacent.
    complement = [r for r in rows if r["variant"] == "complement"]

    def case_of(r):
        return (r["shape"], r["topk"], r["block_q"], r["block_k"])

    assert [r["negligible"] for r in complement] == [0.0, 0.2] * len(global_rows)
    assert [case_of(r) for r in complement[::2]] == [case_of(r) for r in global_rows]
    assert [case_of(r) for r in complement[1::2]] == [case_of(r) for r in global_rows]
    assert {r["topk"] for r in rows if r["shape"] == "S1"} == {0.25, *bench.TOPK_SWEEP}  # the sweep ran
    # The markdown table: a k_l column, one line per row, '-' for the global variant.
    table = [line for line in printed.out.splitlines() if line.startswith("| S")]
    assert len(table) == len(rows)
    header = next(line for line in printed.out.splitlines() if line.startswith("| shape |"))
    assert header.split(" | ")[4] == "k_l"
    assert {line.split(" | ")[4] for line in table if " global " in line} == {"-"}
    assert {line.split(" | ")[4] for line in table if " complement " in line} == {"0", "0.2"}
    # Rules (the block map and the layer's forward under each) and tiles.
    extra = doc["rules_and_tiles"]
    assert all(e["error"] is None and e["ms"] > 0 for e in extra), extra
    whats = [e["what"] for e in extra]
    assert sum(w.startswith("block map, ") for w in whats) == 5
    assert sum(w.startswith("layer forward ") for w in whats) == 5
    assert any("negligible threshold" in w for w in whats)
    assert any(w.startswith("4x4x4 tiles") for w in whats)
    assert all(0 < e["mean_density"] <= 1 for e in extra if e["mean_density"] is not None)


@pytest.mark.parametrize(
    "negligible, message",
    [
        ("0.6", "k_l = 0.6 with topk = 0.5 (S1) gives topk + k_l = 1.1 > 1"),
        ("0,abc", "--negligible: expected comma-separated fractions in [0, 1), got 'abc'"),
        ("1", "--negligible: expected fractions in [0, 1), got '1'"),
        ("nan", "--negligible: expected fractions in [0, 1), got 'nan'"),
    ],
)
def test_bench_sla_rejects_bad_negligible_fractions_before_timing(negligible, message, capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    with pytest.raises(SystemExit, match=re.escape(message)):
        bench.main(["--smoke", "--negligible", negligible])
    assert "|" not in capsys.readouterr().out  # nothing was timed or printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the GPU run is the lead's")
def test_bench_sla_without_a_gpu_says_so(capsys, monkeypatch):
    assert load_bench(monkeypatch).main(["--shapes", "W1", "--no-sweep"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_bench_sla_refuses_an_unwritable_report_before_timing(tmp_path, capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    timed = []
    monkeypatch.setattr(bench, "bench_case", lambda *a, **k: timed.append(a))
    for out, message in (
        (tmp_path, rf"--json: expected a file path, but '{tmp_path}' is an existing folder"),
        (tmp_path / "missing" / "b.json", r"--json: folder '.*missing' of '.*b.json' does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--smoke", "--json", str(out)])
        assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert timed == [] and os.listdir(tmp_path) == []
