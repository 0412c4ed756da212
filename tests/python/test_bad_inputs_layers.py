"""Bad input to the layers around the attention (issue 21): the module's constructor, block rules, calibration and
its files, and the package's file output. Each case asserts the exact error and, where a file or a module is
involved, that nothing changed: an existing file keeps its bytes and no temporary file is left beside it, a module
keeps its rule and its parameters. tests/python/test_bad_inputs_diffusers.py does the same for sla.diffusers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import sla
from sla import atomic
from sla.calibration import Calibration

from conftest import assert_unchanged, files_in, make_qkv, module_state


class TwoLayers(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.a = sla.SparseLinearAttention(16, 0.5, **options)
        self.b = sla.SparseLinearAttention(16, 0.5, **options)


def small_calibration() -> Calibration:
    q, k, v = make_qkv(1, 2, 128, 128, 16, seed=3)
    return sla.calibrate((q, k, v), rule="topk", progress=False, rows_per_head=16)


# ---- the module's constructor: every argument checked when given --------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,exc,pattern",
    [
        ((16, 2.0), {}, ValueError, r"^topk: expected a finite value in \(0, 1\], got 2.0$"),
        ((16, float("nan")), {}, ValueError, r"^topk: expected a finite value in \(0, 1\], got nan$"),
        ((16, [0.5, 0.0]), {}, ValueError, r"^topk\[1\]: expected a finite value in \(0, 1\], got 0.0$"),
        ((16, 0.5), dict(BLKQ=100), ValueError, r"^BLKQ: expected 16, 32, 64 or 128, got 100$"),
        ((16, 0.5), dict(BLKK=0), ValueError, r"^BLKK: expected 16, 32, 64 or 128, got 0$"),
        ((16, 0.5), dict(BLKQ=64.0), TypeError, r"^BLKQ: expected an int block size \(16, 32, 64 or 128\)"),
        ((0, 0.5), {}, ValueError, r"^head_dim: expected an int >= 1, got 0$"),
        ((16.0, 0.5), {}, TypeError, r"^head_dim: expected an int >= 1, got 16.0 \(float\)$"),
        ((16, 0.5), dict(use_bf16="no"), TypeError, r"^use_bf16: expected True or False, got 'no' \(str\)$"),
        ((16, 0.5), dict(scale=-1.0), ValueError, r"^scale: expected a finite number > 0 or None, got -1.0$"),
        (
            (16, 0.5),
            dict(negligible=0.2),
            ValueError,
            r"^rule: negligible = 0.2 needs variant 'complement' .*got variant 'global'$",
        ),
        (
            (16, 0.5),
            dict(variant="complement", negligible=0.6),
            ValueError,
            r"^negligible: expected a finite value in \[0, 1 - topk\] = \[0, 0.5\], got 0.6$",
        ),
        (
            (16, 0.5),
            dict(rule=sla.BlockRule.make(top_p=0.9)),
            ValueError,
            r"^rule: expected either rule= or the rule options \['topk'\], not both",
        ),
        ((16, None), dict(rule={"topk": 0.5}), TypeError, r"^rule: expected an sla.BlockRule, got dict$"),
        ((16, None), dict(top_p=0.9, max_blocks=0), ValueError, r"^max_blocks: expected None \(meaning Nk\) or an int"),
    ],
)
def test_module_constructor_checks_every_argument(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sla.SparseLinearAttention(*args, **kwargs)


def test_ulysses_module_constructor_checks_its_own_arguments():
    import sla.distributed as sd

    with pytest.raises(ValueError, match=r"^head_order: expected a permutation of range\(H\), got \[0, 0, 1\]$"):
        sd.UlyssesSparseLinearAttention(16, 0.5, head_order=[0, 0, 1])
    with pytest.raises(TypeError, match=r"^reduce_proj_grad: expected True or False, got 'yes' \(str\)$"):
        sd.UlyssesSparseLinearAttention(16, 0.5, reduce_proj_grad="yes")
    with pytest.raises(ValueError, match=r"^topk: expected a finite value in \(0, 1\], got 2.0$"):
        sd.UlyssesSparseLinearAttention(16, 2.0)


def test_set_rule_refused_leaves_the_module_as_it_was():
    layer = sla.SparseLinearAttention(16, 0.5)
    before = module_state(layer)
    with pytest.raises(ValueError, match=r"^rule: negligible_threshold = 0.01 needs variant 'complement'"):
        layer.set_rule(sla.BlockRule.make(topk=0.5, negligible_threshold=0.01))
    with pytest.raises(TypeError, match=r"^rule: expected an sla.BlockRule, got dict$"):
        layer.set_rule({"topk": 0.25})
    assert_unchanged(before, module_state(layer))


def test_empty_projection_is_an_error():
    q, k, v = make_qkv(1, 2, 64, 64, 16)
    with pytest.raises(ValueError, match=r"^proj_weight: expected a \(Dv, Dv\) tensor \(Dv >= 1\), got an empty"):
        sla.sparse_linear_attention(q, k, v, topk=0.5, proj_weight=torch.empty(0, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^proj_bias: expected a \(Dv,\) tensor \(Dv >= 1\), got an empty"):
        sla.sparse_linear_attention(q, k, v, topk=0.5, proj_bias=torch.empty(0, dtype=torch.float64))


# ---- block rules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(topk=1.5), ValueError, r"^topk: expected a finite value in \(0, 1\], got 1.5$"),
        (dict(topk=float("inf")), ValueError, r"^topk: expected a finite value in \(0, 1\], got inf$"),
        (dict(topk=torch.tensor([0.5, float("nan")])), ValueError, r"^topk\[1\]: expected a finite value"),
        (dict(topk=torch.zeros(0)), ValueError, r"^topk: expected a float or one value per head \(a non-empty"),
        (dict(top_p=float("nan")), ValueError, r"^top_p: expected a finite value in \(0, 1\], got nan$"),
        (dict(topk=0.5, negligible=float("nan")), ValueError, r"^negligible: expected a finite value in \[0, 1 - topk"),
        (dict(topk=0.5, negligible_threshold=1.0), ValueError, r"^negligible_threshold: expected a finite value"),
        (
            dict(topk=0.5, negligible=0.1, negligible_threshold=0.01),
            ValueError,
            r"^negligible: expected 0 when negligible_threshold is set",
        ),
        (
            dict(topk=0.5, max_negligible=0.5),
            ValueError,
            r"^max_negligible: expected None without negligible_threshold",
        ),
        (
            dict(topk=0.5, negligible_threshold=0.01, max_negligible=1.5),
            ValueError,
            r"^max_negligible: expected None or a finite value in \[0, 1\], got 1.5$",
        ),
        (dict(top_p=0.9, min_blocks=0), ValueError, r"^min_blocks: expected an int >= 1, got 0$"),
        (dict(top_p=0.9, min_blocks=2.0), TypeError, r"^min_blocks: expected an int, got 2.0 \(float\)$"),
    ],
)
def test_block_rule_checks_values_when_made(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sla.BlockRule.make(**kwargs)


def test_block_rule_made_directly_is_checked_and_normalised():
    with pytest.raises(ValueError, match=r"^topk: expected a finite value in \(0, 1\], got 2.0$"):
        sla.BlockRule(topk=2.0)
    assert sla.BlockRule(topk=[0.25, 0.5]) == sla.BlockRule.make(topk=(0.25, 0.5))
    with pytest.raises(TypeError, match=r"^rule: expected a dict of rule options, got list$"):
        sla.BlockRule.from_dict([0.5])


# ---- calibration: arguments and samples, checked before the work -------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(block_q=100), ValueError, r"^block_q: expected 16, 32, 64 or 128, got 100$"),
        (dict(rows_per_head=0), ValueError, r"^rows_per_head: expected an int >= 1, got 0$"),
        (dict(quality=float("nan")), ValueError, r"^quality: expected a value in \(0, 1\] for target 'mass'"),
        (dict(quality="high"), TypeError, r"^quality: expected a number in \(0, 1\] for target 'mass'"),
        (dict(budget=float("nan")), ValueError, r"^budget: expected an average density in \(0, 1\], got nan$"),
        (dict(min_blocks=0), ValueError, r"^min_blocks: expected an int >= 1, got 0$"),
        (dict(min_blocks=3, max_blocks=2), ValueError, r"^max_blocks: expected None \(meaning Nk\) or an int >= "),
        (dict(p_grid=[0.5, float("nan")]), ValueError, r"^p_grid: expected ascending values in \(0, 1\]"),
        (dict(seed=1.5), TypeError, r"^seed: expected an int, got 1.5 \(float\)$"),
    ],
)
def test_calibrate_checks_arguments_before_the_work(kwargs, exc, pattern):
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    said = []
    with pytest.raises(exc, match=pattern):
        sla.calibrate((q, k, v), progress=said.append, **kwargs)
    assert said == []  # no layer was calibrated


def test_calibrate_refuses_non_finite_and_mismatched_samples():
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    k[0, 1, 5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^samples\[''\]\[0\]: k holds NaN or Inf values$"):
        sla.calibrate((q, k, v), progress=False)
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    with pytest.raises(ValueError, match=r"^samples\['a'\]\[0\]: expected k \(B, H, Lk, D\) and v"):
        sla.calibrate({"a": [(q, k[:, :1], v)]}, progress=False)
    with pytest.raises(ValueError, match=r"^samples\['a'\]: expected a non-empty list of \(q, k, v\) passes$"):
        sla.calibrate({"a": []}, progress=False)


def test_calibrate_refuses_an_unwritable_picture_folder_before_the_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    q, k, v = make_qkv(1, 2, 128, 128, 16)
    said = []
    with pytest.raises(NotADirectoryError, match=r"^picture_dir: expected a folder, but .* is an existing file$"):
        sla.calibrate((q, k, v), progress=said.append, picture_dir=str(blocker))
    with pytest.raises(NotADirectoryError, match=r"^picture_dir: cannot create folder .*: .* is a file$"):
        sla.calibrate((q, k, v), progress=said.append, picture_dir=str(blocker / "png"))
    assert said == [] and blocker.read_text() == "x"


def test_record_needs_sla_layers_and_does_not_nest():
    with pytest.raises(ValueError, match=r"^model: expected at least one SLA layer to record"):
        with sla.record(nn.Linear(2, 2)):
            pass
    model = TwoLayers()
    with pytest.raises(ValueError, match=r"^max_passes: expected an int >= 1, got 0$"):
        with sla.record(model, max_passes=0):
            pass
    with sla.record(model):
        with pytest.raises(RuntimeError, match=r"^model: layers \['a', 'b'\] are already recording"):
            with sla.record(model):
                pass
    assert model.a.recorder is None and model.b.recorder is None
    with pytest.raises(TypeError, match=r"^model\['x'\]: expected an SLA layer"):
        with sla.record({"x": nn.Linear(2, 2)}):
            pass


# ---- apply_rules: all or nothing --------------------------------------------------------------------------------


def test_apply_rules_refused_changes_no_layer():
    model = TwoLayers()
    before = module_state(model)
    good = sla.BlockRule.make(topk=[0.25, 0.5])
    with pytest.raises(TypeError, match=r"^calibration\['b'\]: expected an sla.BlockRule, got dict$"):
        sla.apply_rules(model, {"a": good, "b": {"topk": 0.25}})
    with pytest.raises(ValueError, match=r"^calibration\['b'\]: negligible = 0.1 needs variant 'complement'"):
        sla.apply_rules(model, {"a": good, "b": sla.BlockRule.make(topk=0.5, negligible=0.1)})
    with pytest.raises(ValueError, match=r"^calibration: layers do not match the model \(not calibrated: \['b'\]"):
        sla.apply_rules(model, {"a": good})
    assert_unchanged(before, module_state(model))
    assert sla.apply_rules(model, {"a": good}, strict=False) == 1 and model.a.rule == good


# ---- calibration files ------------------------------------------------------------------------------------------


def write_calibration(path, mutate) -> str:
    d = small_calibration().to_json()
    mutate(d)
    path.write_text(json.dumps(d))
    return str(path)


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        (
            lambda d: d["layers"][""]["rule"].update(topk=[0.5, -0.5]),
            ValueError,
            r"layers\[''\]\['rule'\]: topk\[1\]: expected a finite value in \(0, 1\], got -0.5$",
        ),
        (
            lambda d: d["layers"][""]["rule"].update(topk=[0.5, 1.5]),
            ValueError,
            r"layers\[''\]\['rule'\]: topk\[1\]: expected a finite value in \(0, 1\], got 1.5$",
        ),
        (
            lambda d: d["layers"][""]["rule"].update(topk=[0.5]),
            ValueError,
            r"layers\[''\]\['rule'\]: expected H = 2 per-head values \(the layer's shape\['heads'\]\), got 1$",
        ),
        (
            lambda d: d["layers"][""].update(rule={"top_p": 0.9, "min_blocks": 0}),
            ValueError,
            r"layers\[''\]\['rule'\]: min_blocks: expected an int >= 1, got 0$",
        ),
        (
            lambda d: d["layers"][""].update(rule={"top_p": 0.9, "min_blocks": 4, "max_blocks": 2}),
            ValueError,
            r"layers\[''\]\['rule'\]: max_blocks: expected None \(meaning Nk\) or an int >= min_blocks = 4, got 2$",
        ),
        (
            lambda d: d["settings"].update(block_q=100),
            ValueError,
            r"settings\['block_q'\]: expected 16, 32, 64 or 128, got 100$",
        ),
        (lambda d: d["layers"][""].pop("rule"), ValueError, r"layers\[''\]: expected a 'rule' entry, got keys"),
        (lambda d: d.pop("layers"), ValueError, r"layers: missing \(expected a dict layer name -> entry\)$"),
        (lambda d: d.update(version=2), ValueError, r"version: expected 1, got 2$"),
    ],
)
def test_load_rules_checks_values_and_names_the_file(tmp_path, mutate, exc, pattern):
    path = write_calibration(tmp_path / "rules.json", mutate)
    with pytest.raises(exc, match=rf"^calibration file '{path}': {pattern}"):
        sla.load_rules(path)


def test_json_errors_name_the_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text('{"format": "sla-calibration", "layers": ')
    with pytest.raises(ValueError, match=rf"^calibration file '{path}': not valid JSON: Expecting value"):
        sla.load_rules(str(path))
    path.write_text('{"format": "sla-calibration", "version": 1, "layers": {"a": {"rule": {"topk": NaN}}}}')
    with pytest.raises(ValueError, match=rf"^calibration file '{path}': not valid JSON: NaN is not a JSON number$"):
        sla.load_rules(str(path))
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=rf"^calibration file '{path}': not a UTF-8 text file"):
        sla.load_rules(str(path))
    with pytest.raises(FileNotFoundError, match=rf"^calibration file '{tmp_path / 'none.json'}': no such file$"):
        sla.apply_rules(TwoLayers(), str(tmp_path / "none.json"))


def test_calibration_fields_are_checked_when_made():
    with pytest.raises(ValueError, match=r"^layers\['a'\]\['rule'\]: topk: expected a finite value in \(0, 1\]"):
        Calibration({"a": {"rule": {"topk": 2.0}}}, {})
    with pytest.raises(TypeError, match=r"^settings: expected a dict, got list$"):
        Calibration({}, [])
    with pytest.raises(ValueError, match=r"^settings\['budget'\]: expected an average density in \(0, 1\], got 2.0$"):
        Calibration({}, {"budget": 2.0})


# ---- atomic writes ----------------------------------------------------------------------------------------------


def test_calibration_save_that_fails_keeps_the_old_file(tmp_path):
    cal = small_calibration()
    path = tmp_path / "rules.json"
    cal.save(str(path))
    before = files_in(tmp_path)
    cal.settings["note"] = object()
    with pytest.raises(TypeError, match=r"^calibration\['settings'\]\['note'\]: expected a JSON value"):
        cal.save(str(path))
    cal.settings["note"] = float("nan")
    with pytest.raises(ValueError, match=r"^calibration\['settings'\]\['note'\]: expected a finite number"):
        cal.save(str(path))
    assert files_in(tmp_path) == before  # the old file, byte for byte, and no temporary file


def test_calibration_save_writes_numpy_scalars_as_numbers(tmp_path):
    cal = small_calibration()
    cal.settings["quality"] = np.float32(0.75)
    cal.settings["seed"] = np.int64(7)
    path = tmp_path / "rules.json"
    cal.save(str(path))
    saved = json.loads(path.read_text())["settings"]
    assert (saved["quality"], saved["seed"]) == (0.75, 7)
    assert Calibration.load(str(path)).rules() == cal.rules()


def test_calibration_save_refuses_unwritable_paths_before_writing(tmp_path):
    cal = small_calibration()
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsADirectoryError, match=r"^path: expected a file path, but .*folder' is an existing folder$"):
        cal.save(str(tmp_path / "folder"))
    with pytest.raises(FileNotFoundError, match=r"^path: folder .*missing' of .* does not exist$"):
        cal.save(str(tmp_path / "missing" / "rules.json"))
    with pytest.raises(NotADirectoryError, match=r"^path: .*file' \(the folder of .*\) is not a folder$"):
        cal.save(str(tmp_path / "file" / "rules.json"))
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"] and os.listdir(tmp_path / "folder") == []


def test_pictures_are_written_atomically(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    q, k, v = make_qkv(1, 2, 128, 128, 16, seed=5)
    sla.calibrate((q, k, v), progress=False, rows_per_head=16, picture_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["layer.png"]
    before = files_in(tmp_path)

    def half_written(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        sla.calibrate((q, k, v), progress=False, rows_per_head=16, picture_dir=str(tmp_path))
    assert files_in(tmp_path) == before


def test_atomic_path_and_folder_replace_or_keep(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic.atomic_path(target) as tmp:
            open(tmp, "wb").write(b"new, half")
            raise RuntimeError("interrupted")
    assert files_in(tmp_path) == {"out.bin": b"old"}
    with atomic.atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".bin")
        open(tmp, "wb").write(b"new")
    assert files_in(tmp_path) == {"out.bin": b"new"}
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~atomic._umask()  # as open() would make it

    folder = tmp_path / "ckpt"
    with atomic.atomic_folder(folder) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic.atomic_folder(folder) as tmp:
            open(os.path.join(tmp, "a"), "w").write("2")
            raise RuntimeError("interrupted")
    assert files_in(folder) == {"a": b"1"} and sorted(os.listdir(tmp_path)) == ["ckpt", "out.bin"]
    with atomic.atomic_folder(folder) as tmp:
        open(os.path.join(tmp, "b"), "w").write("2")
    assert files_in(folder) == {"b": b"2"} and sorted(os.listdir(tmp_path)) == ["ckpt", "out.bin"]


def test_output_equal_to_an_input_is_refused(tmp_path):
    data = tmp_path / "data.npz"
    data.write_bytes(b"captured")
    with pytest.raises(ValueError, match=r"^out: .*data.npz' is also an input of this call; writing it would"):
        atomic.check_output_path("out", str(tmp_path / "." / "data.npz"), inputs=[str(data)])
    os.symlink(data, tmp_path / "link.npz")
    with pytest.raises(ValueError, match=r"^out: .*link.npz' is also an input of this call"):
        atomic.check_output_path("out", str(tmp_path / "link.npz"), inputs=[str(data)])
    assert data.read_bytes() == b"captured"
