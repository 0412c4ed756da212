"""Bad input to sla.diffusers (issue 21): every call that changes a model (enable_sla, disable_sla,
load_turbodiffusion, apply_rules, set_rule, option attributes) checks everything first and changes nothing when it
raises; the processor's constructor checks its arguments. Each case asserts the exact error and that the model is
bitwise unchanged: every parameter and buffer (values and dtypes), every module's type and attributes, and so every
processor. Skipped without diffusers."""

from __future__ import annotations

import copy
import types

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")

from diffusers import WanTransformer3DModel  # noqa: E402
from test_diffusers import randomise_projections, to_turbodiffusion  # noqa: E402

import sla  # noqa: E402
import sla.diffusers as sd  # noqa: E402

from conftest import assert_unchanged, module_state  # noqa: E402

BLOCKS = dict(block_q=16, block_k=16)


def tiny(**overrides):
    return WanTransformer3DModel(**sd.wan_config("tiny", **overrides)).float()


# ---- enable_sla -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(block_q=100), ValueError, r"^block_q: expected 16, 32, 64 or 128, got 100$"),
        (dict(topk=2.0), ValueError, r"^topk: expected a finite value in \(0, 1\], got 2.0$"),
        (dict(topk=[0.5, 0.5, 0.5]), ValueError, r"^rule: expected H = 2 values \(one per head\) or one value, got 3$"),
        (dict(eps=float("nan")), ValueError, r"^eps: expected a finite value > 0, got nan$"),
        (dict(scale=0.0), ValueError, r"^scale: expected a finite number > 0 or None, got 0.0$"),
        (dict(negligible=0.1), ValueError, r"^rule: negligible = 0.1 needs variant 'complement'"),
        (dict(record_block_map=1), TypeError, r"^record_block_map: expected a bool, got 1$"),
        (dict(top_p=0.9, topk=0.1), ValueError, r"^topk/top_p: expected exactly one of them"),
        (
            dict(rule=sla.BlockRule.make(top_p=0.9), topk=0.2),
            ValueError,
            r"^rule: expected either rule= or the rule options \['topk'\], not both",
        ),
        (
            dict(layer_options={1: {"topk": 2.0}}),
            ValueError,
            r"^layer_options\[1\]: topk: expected a finite value in \(0, 1\], got 2.0$",
        ),
        (
            dict(layer_options={1: {"block_k": 48}}),
            ValueError,
            r"^layer_options\[1\]: block_k: expected 16, 32, 64 or 128, got 48$",
        ),
        (
            dict(layer_options={1: {"top_k": 0.1}}),
            TypeError,
            r"^layer_options\[1\]: unknown SLA option\(s\) \['top_k'\]",
        ),
        (dict(layer_options={1: 0.5}), TypeError, r"^layer_options\[1\]: expected a dict of SLA options or None, got"),
        (dict(layer_options={1: {"enabled": "no"}}), TypeError, r"^layer_options\[1\]: 'enabled' expects True or"),
        (dict(layer_options=[0.1]), TypeError, r"^layer_options: expected a dict layer -> options or a callable"),
    ],
)
def test_enable_sla_refused_changes_nothing(kwargs, exc, pattern):
    model = tiny()
    before = module_state(model)
    with pytest.raises(exc, match=pattern):
        sd.enable_sla(model, **{**BLOCKS, **kwargs})
    assert_unchanged(before, module_state(model))


def hooks(model) -> dict:
    """The forward hooks and pre-hooks of every module (the 3D token order's), by module name."""
    return {
        name: (list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


@pytest.mark.parametrize(
    "tile,exc,pattern",
    [
        ((2, 0, 2), ValueError, r"^tile: expected three ints >= 1 \(t, h, w\), got \(2, 0, 2\)$"),
        ((2, 2), ValueError, r"^tile: expected three ints >= 1 \(t, h, w\), got \(2, 2\)$"),
        ((2.0, 2, 2), ValueError, r"^tile: expected three ints >= 1 \(t, h, w\), got \(2.0, 2, 2\)$"),
        (8, TypeError, r"^tile: expected \(t, h, w\), three ints >= 1, or None, got 8$"),
        ("222", TypeError, r"^tile: expected \(t, h, w\), three ints >= 1, or None, got '222'$"),
    ],
)
def test_enable_sla_with_a_bad_tile_changes_nothing(tile, exc, pattern):
    # Every other option is valid: the tile is checked with them, before any layer changes or any hook is installed.
    model = tiny()
    before = module_state(model)
    assert hooks(model) == {}
    with pytest.raises(exc, match=pattern):
        sd.enable_sla(model, topk=0.5, tile=tile, **BLOCKS)
    assert_unchanged(before, module_state(model))
    assert hooks(model) == {} and sd.token_order(model) is None and sd.sla_processors(model) == {}


def test_enable_sla_with_a_bad_tile_keeps_the_installed_token_order():
    model = sd.enable_sla(tiny(), topk=0.5, tile=(2, 2, 2), **BLOCKS)
    randomise_projections(model)
    before, before_hooks = module_state(model), hooks(model)
    assert sorted(before_hooks) == ["", "patch_embedding", "proj_out", "rope"]
    with pytest.raises(ValueError, match=r"^tile: expected three ints >= 1"):
        sd.enable_sla(model, topk=0.25, tile=(2, 0, 2), **BLOCKS)
    assert_unchanged(before, module_state(model))
    assert hooks(model) == before_hooks and sd.token_order(model) == (2, 2, 2)
    assert model.blocks[0].attn1.processor.topk == 0.5


def test_enable_sla_with_a_tile_checks_every_transformer_first():
    second = tiny()
    del second.rope  # a Wan-like transformer the token order cannot hook
    pipe = types.SimpleNamespace(transformer=tiny(), transformer_2=second)
    before = [module_state(pipe.transformer), module_state(second)]
    with pytest.raises(TypeError, match=r"^tile: the 3D token order needs a Wan transformer with a `rope` module; "):
        sd.enable_sla(pipe, topk=0.5, tile=(2, 2, 2), **BLOCKS)
    assert_unchanged(before[0], module_state(pipe.transformer))
    assert_unchanged(before[1], module_state(second))
    assert hooks(pipe.transformer) == {} and hooks(second) == {}


def test_enable_sla_refused_on_an_sla_model_keeps_its_options_and_projections():
    model = sd.enable_sla(tiny(), topk=0.5, **BLOCKS)
    randomise_projections(model)
    before = module_state(model)
    with pytest.raises(ValueError, match=r"^layer_options\[1\]: topk: expected a finite value in \(0, 1\], got 0.0$"):
        sd.enable_sla(model, topk=0.25, layer_options={1: {"topk": 0.0}}, **BLOCKS)
    assert_unchanged(before, module_state(model))
    assert model.blocks[0].attn1.processor.topk == 0.5


def test_enable_sla_on_a_pipeline_checks_both_transformers_first():
    pipe = types.SimpleNamespace(transformer=tiny(), transformer_2=torch.nn.Linear(2, 2))
    before = module_state(pipe.transformer)
    with pytest.raises(TypeError, match=r"^Linear has no Wan self-attention layers \(blocks.\{i\}.attn1\)$"):
        sd.enable_sla(pipe, topk=0.5, **BLOCKS)
    assert_unchanged(before, module_state(pipe.transformer))


def test_disable_sla_on_a_pipeline_checks_both_transformers_first():
    pipe = types.SimpleNamespace(
        transformer=sd.enable_sla(tiny(), topk=0.5, **BLOCKS), transformer_2=torch.nn.Linear(2, 2)
    )
    before = module_state(pipe.transformer)
    with pytest.raises(TypeError, match=r"^Linear has no Wan self-attention layers \(blocks.\{i\}.attn1\)$"):
        sd.disable_sla(pipe)
    assert_unchanged(before, module_state(pipe.transformer))


# ---- the processor: constructor, options, set_rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(topk=2.0), ValueError, r"^topk: expected a finite value in \(0, 1\], got 2.0$"),
        (dict(block_q=100), ValueError, r"^block_q: expected 16, 32, 64 or 128, got 100$"),
        (dict(variant="paper"), ValueError, r"^variant: expected one of 'global', 'complement', got 'paper'$"),
        (dict(feature_map="gelu"), ValueError, r"^feature_map: expected one of 'softmax', 'elu', 'relu', got 'gelu'$"),
        (dict(reuse_block_map_steps=-1), ValueError, r"^reuse_block_map_steps: expected an int >= 0, got -1$"),
        (dict(cuda_dtype=torch.float32), ValueError, r"^cuda_dtype: expected torch.bfloat16 or torch.float16"),
        (dict(heads=2, top_p=[0.9, 0.9, 0.9]), ValueError, r"^rule: expected H = 2 values \(one per head\)"),
        (dict(heads=0), ValueError, r"^heads: expected an int >= 1, got 0$"),
    ],
)
def test_processor_constructor_checks_every_argument(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sd.SLAWanAttnProcessor(16, **kwargs)


def test_processor_head_dim_zero_is_refused():
    with pytest.raises(ValueError, match=r"^head_dim: expected an int >= 1, got 0$"):
        sd.SLAWanAttnProcessor(0)


def test_processor_options_and_rules_refused_change_nothing():
    model = sd.enable_sla(tiny(), topk=0.5, **BLOCKS)
    proc = model.blocks[0].attn1.processor
    before = module_state(model)
    with pytest.raises(ValueError, match=r"^topk: expected a finite value in \(0, 1\], got 2.0$"):
        proc.topk = 2.0
    with pytest.raises(ValueError, match=r"^block_q: expected 16, 32, 64 or 128, got 100$"):
        proc.configure(topk=0.25, block_q=100)
    with pytest.raises(ValueError, match=r"^rule: expected H = 2 values \(one per head\) or one value, got 3$"):
        proc.set_rule(sla.BlockRule.make(top_p=[0.9, 0.8, 0.7]))
    with pytest.raises(ValueError, match=r"^rule: negligible_threshold = 0.01 needs variant 'complement'"):
        proc.set_rule(sla.BlockRule.make(top_p=0.9, negligible_threshold=0.01))
    assert_unchanged(before, module_state(model))


def test_apply_rules_to_wan_layers_refused_changes_no_layer():
    model = sd.enable_sla(tiny(), topk=0.5, **BLOCKS)
    before = module_state(model)
    good = sla.BlockRule.make(topk=[0.25, 0.5])
    bad = sla.BlockRule.make(top_p=[0.9, 0.9, 0.9])
    rules = {"blocks.0.attn1.processor": good, "blocks.1.attn1.processor": bad}
    with pytest.raises(
        ValueError, match=r"^calibration\['blocks.1.attn1.processor'\]: expected H = 2 values \(one per head\)"
    ):
        sla.apply_rules(model, rules)
    assert_unchanged(before, module_state(model))


# ---- load_turbodiffusion ----------------------------------------------------------------------------------------


def test_load_turbodiffusion_with_wrong_shapes_changes_nothing():
    source = sd.enable_sla(tiny(ffn_dim=96), **BLOCKS)  # another configuration: every FFN weight has another shape
    ckpt = to_turbodiffusion(source.state_dict())
    model = tiny()
    before = module_state(model)
    with pytest.raises(
        ValueError,
        match=r"^state_dict_or_path: 6 tensors do not fit the model \(shape or dtype\): "
        r"blocks.0.ffn.net.0.proj.weight: \(96, 32\) torch.float32 for \(64, 32\) torch.float32; ",
    ):
        sd.load_turbodiffusion(model, ckpt, **BLOCKS)
    assert_unchanged(before, module_state(model))  # no tensor copied, SLA not enabled


def test_load_turbodiffusion_with_a_wrong_dtype_or_option_changes_nothing():
    ckpt = to_turbodiffusion(sd.enable_sla(tiny(), **BLOCKS).state_dict())
    model = tiny()
    before = module_state(model)
    bad = copy.copy(ckpt["state_dict"])
    bad["net.blocks.1.self_attn.q.weight"] = torch.zeros(32, 32, dtype=torch.int32)
    with pytest.raises(
        ValueError, match=r"blocks.1.attn1.to_q.weight: \(32, 32\) torch.int32 for \(32, 32\) torch.float32"
    ):
        sd.load_turbodiffusion(model, bad, **BLOCKS)
    with pytest.raises(ValueError, match=r"^block_q: expected 16, 32, 64 or 128, got 100$"):
        sd.load_turbodiffusion(model, ckpt, block_q=100, block_k=16)
    with pytest.raises(TypeError, match=r"^unknown SLA option\(s\) \['top_k'\]"):
        sd.load_turbodiffusion(model, ckpt, top_k=0.1, **BLOCKS)
    assert_unchanged(before, module_state(model))
    sd.load_turbodiffusion(model, ckpt, **BLOCKS)  # the good checkpoint still loads
    assert all(isinstance(b.attn1.processor, sd.SLAWanAttnProcessor) for b in model.blocks)
