"""sla.diffusers: SLA in diffusers' WanTransformer3DModel (skipped when diffusers is not installed).

CPU tests use a tiny random Wan (2 blocks, 2 heads of 16, 48 tokens) in float64 or float32: SLA at topk 1 with
zero projections must be dense attention (outputs and gradients), projections must train, save and load, compile
and checkpoint; TurboDiffusion checkpoints written here in the original Wan naming must load. GPU tests (skipped
without CUDA) repeat the equivalence on two blocks of the Wan2.1-1.3B configuration in bf16 under FlashAttention's
rule (our error at most twice that of the dense model in the same dtype).
"""

from __future__ import annotations

import copy
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffusers>=0.35')")

from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanAttnProcessor  # noqa: E402

import sla  # noqa: E402
import sla.diffusers as sd  # noqa: E402

from conftest import requires_cuda  # noqa: E402


@pytest.fixture(autouse=True)
def keep_the_active_attention_backend():
    # set_attention_backend also sets diffusers' process-wide active backend: restore it after each test.
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = active


TINY = sd.wan_config("tiny")
BLOCKS = dict(block_q=16, block_k=16)  # 48 tokens: 3 x 3 blocks, so that topk < 1 is really sparse


def tiny(dtype=torch.float64, **overrides):
    return WanTransformer3DModel(**{**TINY, **overrides}).to(dtype)


def test_wan_config_names_and_overrides():
    assert sd.wan_config("1.3B")["num_layers"] == 30 and sd.wan_config("14B")["num_attention_heads"] == 40
    two = sd.wan_config("1.3B", num_layers=2)
    two["ffn_dim"] = 1
    assert two["num_layers"] == 2 and sd.wan_config("1.3B")["ffn_dim"] == 8960  # a fresh dict on every call
    with pytest.raises(ValueError, match="wan_config: name must be one of '1.3B', '14B', 'tiny', got '7B'"):
        sd.wan_config("7B")


def inputs(dtype=torch.float64, batch=1, device="cpu"):
    latents = torch.randn(batch, 4, 3, 8, 8, dtype=dtype, device=device)  # 3 x 4 x 4 = 48 tokens
    timestep = torch.tensor([500.0] * batch, device=device)
    text = torch.randn(batch, 7, 32, dtype=dtype, device=device)
    return latents, timestep, text


def randomise_projections(model, std=0.3):
    with torch.no_grad():
        for p in sd.sla_processors(model).values():
            p.proj_l.weight.normal_(0, std)
            p.proj_l.bias.normal_(0, std)


def attn1_outputs(model, args):
    """The model's output and the output of every block's self-attention."""
    captured = []
    hooks = [b.attn1.register_forward_hook(lambda m, i, o: captured.append(o)) for b in model.blocks]
    try:
        out = model(*args).sample
    finally:
        for h in hooks:
            h.remove()
    return out, captured


def grads_of(model, args, seed=7):
    model.zero_grad()
    out = model(*args).sample
    d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * d_out).sum().backward()
    return {
        n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_topk_one_with_zero_projections_is_dense_attention():
    dense = tiny()
    model = sd.enable_sla(copy.deepcopy(dense), topk=1.0, **BLOCKS)
    args = inputs()
    ref, ref_attn = attn1_outputs(dense, args)
    out, sla_attn = attn1_outputs(model, args)
    for r, o in zip(ref_attn, sla_attn):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    ref_grads, grads = grads_of(dense, args), grads_of(model, args)
    assert set(ref_grads) <= set(grads)
    for name, g in ref_grads.items():
        # The model's FP32LayerNorms round to float32 in an fp64 model: compare at float32's precision.
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6 * g.abs().max().item(), msg=name)


def test_gradients_reach_every_projection_and_train():
    model = sd.enable_sla(tiny(torch.float32), topk=0.5, **BLOCKS)
    randomise_projections(model)
    names = [n for n, _ in model.named_parameters() if ".processor.proj_l." in n]
    assert names == [f"blocks.{i}.attn1.processor.proj_l.{p}" for i in range(2) for p in ("weight", "bias")]
    args = inputs(torch.float32)
    grads = grads_of(model, args)
    for name in names:
        assert torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name

    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(*args).sample.square().mean()
    loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        if name in names:
            assert not torch.equal(p.detach(), before[name]), name
    # The projection changes the output: an SLA layer with a trained projection is no longer sparse attention alone.
    plain = sd.enable_sla(copy.deepcopy(model), topk=0.5, **BLOCKS)
    with torch.no_grad():
        for p in sd.sla_processors(plain).values():
            p.proj_l.weight.zero_()
            p.proj_l.bias.zero_()
        assert (plain(*args).sample - model(*args).sample).abs().max() > 1e-4


def test_state_dict_round_trip_and_fp32_projections(tmp_path):
    from safetensors.torch import load_file, save_file

    model = sd.enable_sla(tiny(torch.float32), topk=0.5, **BLOCKS)
    randomise_projections(model)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    other = sd.enable_sla(tiny(torch.float32), topk=0.5, **BLOCKS)
    other.load_state_dict(load_file(str(path)), strict=True)
    args = inputs(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(other(*args).sample, model(*args).sample, rtol=0, atol=0)

    model.to(torch.bfloat16)
    for name, p in model.named_parameters():
        if ".processor.proj_l." in name:
            assert p.dtype == torch.float32, name
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    saved = load_file(str(path))
    torch.testing.assert_close(
        model.blocks[1].attn1.processor.proj_l.weight, saved["blocks.1.attn1.processor.proj_l.weight"], rtol=0, atol=0
    )  # no bf16 rounding
    model.double()  # upcasts apply
    assert model.blocks[0].attn1.processor.proj_l.weight.dtype == torch.float64


def test_compile_fullgraph_equals_eager():
    model = sd.enable_sla(tiny(torch.float32), topk=0.5, **BLOCKS)
    randomise_projections(model)
    args = inputs(torch.float32)
    ref_grads = grads_of(model, args)
    ref = model(*args).sample.detach()
    # aot_eager: dynamo's full graph and AOT autograd through the ops' fake kernels, without inductor's C++ build
    # (minutes on a small CI machine); the GPU test below compiles with inductor.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    grads = grads_of(compiled, args)
    torch.testing.assert_close(compiled(*args).sample.detach(), ref, rtol=1e-6, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = sd.enable_sla(tiny(torch.float64), topk=0.5, **BLOCKS)
    randomise_projections(model)
    args = inputs()
    ref = grads_of(model, args)
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    got = grads_of(model, args)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-10, atol=1e-12, msg=name)


class PerLayerTiles(sd.SLAWanAttnProcessor):
    """The per-layer 3D token order, the reference for the model-level one: gathers Q, K, V into tiles before SLA
    and O back after it, in every layer (what SparseLinearAttention(video_shape=...) does)."""

    grid = None
    tile = None

    def attend(self, q, k, v):
        tiled = (sla.tiling.to_tiles(t, self.grid, self.tile, dim=1) for t in (q, k, v))
        return sla.tiling.from_tiles(super().attend(*tiled), self.grid, self.tile, dim=1)


def per_layer_tiles(model, grid, tile):
    for proc in sd.sla_processors(model).values():
        proc.__class__ = PerLayerTiles
        proc.grid, proc.tile = grid, tile
    return model


# 4 x 3 x 8 x 10 latents: a 3 x 4 x 5 token grid (60 tokens) that 2 x 2 x 2 tiles do not divide (border tiles).
TILE_GRID, TILE = (3, 4, 5), (2, 2, 2)


def tile_inputs(dtype=torch.float64):
    return torch.randn(2, 4, 3, 8, 10, dtype=dtype), torch.tensor([500.0, 300.0]), torch.randn(2, 7, 32, dtype=dtype)


@pytest.mark.parametrize("layers", [None, [1]], ids=["all-sla", "block-0-dense"])
def test_model_level_token_order_equals_per_layer_gathers(layers):
    # Every op of the transformer but self-attention is per token (patch embedding, norms, linear layers, the
    # feed-forward, cross-attention to the same text keys, the head), and the RoPE tables are permuted with their
    # tokens: so the SLA layers receive exactly the tiled Q, K, V of the per-layer version, in the same order, and
    # compute the same numbers; only a dense self-attention (block 0 in the second case) sums its softmax over the
    # keys in another order, which changes float64 rounding only.
    dense = tiny()
    per_layer = per_layer_tiles(sd.enable_sla(copy.deepcopy(dense), topk=0.5, layers=layers, **BLOCKS), TILE_GRID, TILE)
    randomise_projections(per_layer)
    model = sd.enable_sla(copy.deepcopy(dense), topk=0.5, layers=layers, tile=TILE, **BLOCKS)
    model.load_state_dict(per_layer.state_dict())
    assert sd.token_order(model) == TILE and sd.token_order(per_layer) is None
    args = tile_inputs()
    tol = dict(rtol=0, atol=0) if layers is None else dict(rtol=1e-12, atol=1e-12)
    ref, ref_attn = attn1_outputs(per_layer, args)
    out, attn = attn1_outputs(model, args)
    torch.testing.assert_close(out, ref, **tol)
    perm, _ = sla.tiling.tile_permutation(TILE_GRID, TILE)
    for r, o in zip(ref_attn, attn):  # inside the blocks the model-level version's tokens are in tile order
        torch.testing.assert_close(o, r[:, perm], **tol)
    # Weight gradients sum over the tokens, here in another order, and diffusers' FP32LayerNorms compute in float32
    # in an fp64 model: equal to float32 rounding (as test_topk_one_with_zero_projections_is_dense_attention).
    ref_grads, grads = grads_of(per_layer, args), grads_of(model, args)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6 * g.abs().max().item(), msg=name)

    # The order matters for a sparse map (so the comparison above can fail), and disable_sla removes it.
    raster = sd.enable_sla(copy.deepcopy(model), topk=0.5, layers=layers, **BLOCKS)
    assert sd.token_order(raster) is None
    with torch.no_grad():
        assert (raster(*args).sample - out).abs().max() > 1e-6
        sd.disable_sla(model)
        assert sd.token_order(model) is None
        torch.testing.assert_close(model(*args).sample, dense(*args).sample, rtol=1e-12, atol=1e-12)


def test_model_level_token_order_compiles_and_refuses_per_token_timesteps():
    model = sd.enable_sla(tiny(torch.float32), topk=0.5, tile=TILE, **BLOCKS)
    randomise_projections(model)
    args = tile_inputs(torch.float32)
    with torch.no_grad():
        ref = model(*args).sample
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(*args).sample, ref, rtol=1e-6, atol=1e-6)
        latents, _, text = args
        with pytest.raises(NotImplementedError, match="per-token timesteps"):
            model(latents, torch.full((2, 60), 500.0), text)
    with pytest.raises(ValueError, match="tile"):
        sd.enable_sla(tiny(), tile=(2, 0, 2))


def test_disable_restores_dense_attention_and_backends():
    dense = tiny()
    args = inputs()
    with torch.no_grad():
        ref = dense(*args).sample
    model = copy.deepcopy(dense)
    model.set_attention_backend("_native_math")
    sd.enable_sla(model, topk=0.3, **BLOCKS)
    randomise_projections(model)
    assert all(isinstance(b.attn1.processor, sd.SLAWanAttnProcessor) for b in model.blocks)
    assert all(isinstance(b.attn2.processor, WanAttnProcessor) for b in model.blocks)
    with torch.no_grad():
        assert (model(*args).sample - ref).abs().max() > 1e-3  # SLA with projections is not dense attention
    # A backend set after enable_sla reaches the dense cross-attention; SLA layers keep computing SLA.
    model.set_attention_backend("native")
    assert str(model.blocks[0].attn2.processor._attention_backend.value) == "native"
    sd.disable_sla(model)
    assert all(type(b.attn1.processor) is WanAttnProcessor for b in model.blocks)
    assert str(model.blocks[0].attn1.processor._attention_backend.value) == "native"
    assert not [k for k in model.state_dict() if "proj_l" in k]
    with torch.no_grad():
        torch.testing.assert_close(model(*args).sample, ref, rtol=1e-12, atol=1e-12)


def test_layers_and_per_layer_options():
    model = sd.enable_sla(tiny(), topk=0.5, layers=[1], **BLOCKS)
    assert type(model.blocks[0].attn1.processor) is WanAttnProcessor
    assert model.blocks[1].attn1.processor.topk == 0.5

    model = sd.enable_sla(
        tiny(), topk=0.5, layer_options={0: {"topk": 1.0, "variant": "complement"}, 1: {"enabled": False}}, **BLOCKS
    )
    p0 = model.blocks[0].attn1.processor
    assert (p0.topk, p0.variant) == (1.0, "complement") and type(model.blocks[1].attn1.processor) is WanAttnProcessor

    model = sd.enable_sla(tiny(), topk=0.5, layer_options=lambda i: {"topk": 0.25 * (i + 1)}, **BLOCKS)
    assert [b.attn1.processor.topk for b in model.blocks] == [0.25, 0.5]
    with torch.no_grad():
        model(*inputs())
    # Enabling again reconfigures and keeps the trained projection.
    randomise_projections(model)
    w = model.blocks[0].attn1.processor.proj_l.weight.detach().clone()
    sd.enable_sla(model, topk=0.75, **BLOCKS)
    assert model.blocks[0].attn1.processor.topk == 0.75
    assert torch.equal(model.blocks[0].attn1.processor.proj_l.weight, w)

    with pytest.raises(ValueError, match=r"layers: \[5\]"):
        sd.enable_sla(tiny(), layers=[5])
    with pytest.raises(TypeError, match="unknown SLA option"):
        sd.enable_sla(tiny(), layer_options={0: {"top_k": 0.1}})
    with pytest.raises(ValueError, match="topk"):
        sd.enable_sla(tiny(), topk=0.0)
    with pytest.raises(ValueError, match="variant"):
        sd.enable_sla(tiny(), variant="dense")
    with pytest.raises(TypeError, match="Wan transformer"):
        sd.enable_sla(torch.nn.Linear(2, 2))


def test_vace_blocks_get_sla_too():
    from diffusers import WanVACETransformer3DModel

    dense = WanVACETransformer3DModel(**TINY, vace_layers=[0], vace_in_channels=8).double()
    model = sd.enable_sla(copy.deepcopy(dense), topk=1.0, **BLOCKS)
    assert sorted(sd.sla_processors(model)) == [
        "blocks.0.attn1.processor",
        "blocks.1.attn1.processor",
        "vace_blocks.0.attn1.processor",
    ]
    latents, timestep, text = inputs()
    control = torch.randn(1, 8, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = dense(latents, timestep, text, control_hidden_states=control).sample
        out = model(latents, timestep, text, control_hidden_states=control).sample
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    only_vace = sd.enable_sla(copy.deepcopy(dense), layers=["vace_blocks.0"], **BLOCKS)
    assert list(sd.sla_processors(only_vace)) == ["vace_blocks.0.attn1.processor"]


def test_two_experts_of_a_wan22_pipeline():
    pipe = types.SimpleNamespace(transformer=tiny(), transformer_2=tiny())
    assert sd.enable_sla(pipe, topk=0.5, **BLOCKS) is pipe
    assert sorted(sd.sla_processors(pipe)) == sorted(
        f"{t}.blocks.{i}.attn1.processor" for t in ("transformer", "transformer_2") for i in range(2)
    )
    sd.disable_sla(pipe)
    assert not sd.sla_processors(pipe)


def test_block_map_reuse_and_caller_supplied_maps():
    model = sd.enable_sla(tiny(), topk=0.5, reuse_block_map_steps=3, **BLOCKS)
    proc = model.blocks[0].attn1.processor
    args = inputs()
    seen = []
    with torch.no_grad():
        for _ in range(4):
            model(*args)
            seen.append(proc.last_block_map)
    assert seen[0] is seen[1] is seen[2] and seen[3] is not seen[2]
    # A new shape (batch 2) is never served a stale map.
    with torch.no_grad():
        model(*inputs(batch=2))
    assert proc.last_block_map.lut.shape[0] == 2

    # A caller-supplied map: every query block attends to key block 0 only; equals the functional op with it.
    model = sd.enable_sla(tiny(), topk=0.5, **BLOCKS)
    randomise_projections(model)
    lut = torch.zeros(1, 2, 3, 1, dtype=torch.int32)
    proc = model.blocks[0].attn1.processor
    proc.block_map = sla.BlockMap.from_lut(lut, k_blocks=3, block_q=16, block_k=16)
    q, k, v = (torch.randn(1, 48, 2, 16, dtype=torch.float64) for _ in range(3))
    got = proc.attend(q, k, v)
    options = dict(
        topk=0.5, block_q=16, block_k=16, layout="BLHD", proj_weight=proc.proj_l.weight, proj_bias=proc.proj_l.bias
    )
    want = sla.sparse_linear_attention(q, k, v, **options, block_map=proc.block_map)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    unmasked = sla.sparse_linear_attention(q, k, v, **options)
    assert (got - unmasked).abs().max() > 1e-6
    sd.set_block_maps(model, None)
    assert proc.block_map is None
    model.blocks[1].attn1.processor.record_block_map = True
    with torch.no_grad():
        model(*args)
    assert list(sd.recorded_block_maps(model)) == ["blocks.1.attn1.processor"]


def test_ring_attention_is_refused_and_the_context_parallel_seam_is_used():
    # Ulysses context parallelism runs through sla.distributed (tests/python/test_distributed.py runs it on a tiny
    # Wan under diffusers' enable_parallelism over gloo); ring attention merges partial outputs by LSE, which SLA
    # cannot.
    model = sd.enable_sla(tiny(), topk=0.5, **BLOCKS)
    proc = model.blocks[0].attn1.processor
    assert hasattr(proc, "_parallel_config")  # diffusers' enable_parallelism sets it on every processor with it
    args = inputs()
    with torch.no_grad():
        ref = model(*args).sample
    config = types.SimpleNamespace(context_parallel_config=types.SimpleNamespace(ring_degree=2, ulysses_degree=1))
    proc._parallel_config = config
    with pytest.raises(NotImplementedError, match="ring attention"):
        with torch.no_grad():
            model(*args)
    # The seam: with a context-parallel configuration, attention goes through context_parallel_attention.
    calls = []

    def plugged(q, k, v, parallel_config):
        calls.append(parallel_config)
        return proc.local_attention(q, k, v)

    proc.context_parallel_attention = plugged
    with torch.no_grad():
        torch.testing.assert_close(model(*args).sample, ref, rtol=0, atol=0)
    assert calls == [config]


# ---- TurboDiffusion checkpoints ----------------------------------------------------------------------------------

# diffusers -> original Wan names, for writing a checkpoint as TurboDiffusion stores it (the test's own inverse of
# the mapping under test, on the tiny model's keys).
_TO_WAN = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.processor\.proj_l\.", ".self_attn.attn_op.local_attn.proj_l."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.to_([qkv])\.", r".\1."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.norm2\.", ".norm3."),  # diffusers' norm2 (cross-attention norm) is Wan's norm3
]


def to_turbodiffusion(state_dict):
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _TO_WAN:
            key = re.sub(pattern, repl, key)
        if key == "patch_embedding.weight":
            value = value.flatten(1)  # TurboDiffusion's linear patch embedding
        out["net." + key] = value.clone()
    return {"state_dict": out}


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "dict"])
def test_load_turbodiffusion_checkpoint(tmp_path, fmt):
    source = sd.enable_sla(tiny(torch.float32), topk=0.1, **BLOCKS)
    randomise_projections(source)
    ckpt = to_turbodiffusion(source.state_dict())
    assert "net.blocks.1.self_attn.attn_op.local_attn.proj_l.weight" in ckpt["state_dict"]
    assert "net.blocks.0.norm3.weight" in ckpt["state_dict"]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        target = tmp_path / "turbo.safetensors"
        save_file(ckpt["state_dict"], str(target))
    elif fmt == "pt":
        target = tmp_path / "turbo.pth"
        torch.save(ckpt, target)
    else:
        target = ckpt

    model = sd.load_turbodiffusion(tiny(torch.float32), target, topk=0.5, **BLOCKS)
    assert all(isinstance(b.attn1.processor, sd.SLAWanAttnProcessor) for b in model.blocks)
    assert model.blocks[0].attn1.processor.topk == 0.5
    want = source.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    if fmt == "dict":
        assert "net.blocks.0.self_attn.q.weight" in ckpt["state_dict"]  # the caller's dict is left as it was


def test_load_turbodiffusion_refuses_a_mismatching_checkpoint():
    ckpt = to_turbodiffusion(sd.enable_sla(tiny(torch.float32), **BLOCKS).state_dict())["state_dict"]
    del ckpt["net.blocks.0.self_attn.q.weight"]
    model = tiny(torch.float32)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"1 model keys missing \['blocks.0.attn1.to_q.weight'\]"):
        sd.load_turbodiffusion(model, ckpt)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k in before)
    bigger = to_turbodiffusion(sd.enable_sla(tiny(torch.float32, num_layers=3), **BLOCKS).state_dict())
    with pytest.raises(ValueError, match=r"layers \[2\]"):
        sd.load_turbodiffusion(tiny(torch.float32), bigger)
    quantised = {"blocks.0.self_attn.q.weight": torch.zeros(2, 2, dtype=torch.int8)}
    with pytest.raises(ValueError, match="int8"):
        sd.load_turbodiffusion(tiny(torch.float32), quantised)
    with pytest.raises(FileNotFoundError, match="no such file"):
        sd.load_turbodiffusion(tiny(torch.float32), "/nonexistent/turbo.pth")


def load_bench_dit():
    """bench/bench_dit.py as a module (it is a script, not part of the package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench_dit.py")
    spec = importlib.util.spec_from_file_location("bench_dit", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_dit_smoke_runs_on_the_cpu(tmp_path):
    # bench/bench_dit.py --smoke: the benchmark's code paths (dense and SLA, attention timing, training step) on a
    # tiny model, so that a GPU run does not find a broken script.
    import json

    bench = load_bench_dit()
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--modes", "eager", "--train", "--warmup", "0", "--iters", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in rows] == ["eager", "train"]
    assert all(r["dense_ms"] > 0 and r["sla_ms"] > 0 for r in rows)
    assert rows[0]["sla_attention_ms"] > 0 and 0 < rows[0]["sla_attention_share"] < 1


def test_bench_dit_smoke_times_the_model_level_token_order(tmp_path):
    # --tile adds SLA with the model-level 3D order beside raster order; a bad tile is refused when parsed.
    import json

    bench = load_bench_dit()
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--modes", "eager", "--tile", "1,4,4", "--warmup", "0", "--iters", "1", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["tile"] == [1, 4, 4] and row["sla_tiled_ms"] > 0 and row["tiled_over_raster"] > 0
    assert 0 < row["sla_tiled_attention_share"] < 1
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--tile", "4,4"])


# ---- GPU: two blocks of Wan2.1-1.3B ------------------------------------------------------------------------------

WAN13_2BLOCKS = sd.wan_config("1.3B", num_layers=2)


def gpu_inputs(dtype, frames=6, height=48, width=64):
    g = torch.Generator(device="cuda").manual_seed(0)
    latents = torch.randn(1, 16, frames, height, width, generator=g, device="cuda").to(dtype)  # 6*24*32 = 4608
    text = torch.randn(1, 512, 4096, generator=g, device="cuda").to(dtype)
    return latents, torch.tensor([700.0], device="cuda"), text


def _err(x, ref):
    return (x.double() - ref.double()).abs().max().item()


@requires_cuda
def test_gpu_topk_one_matches_dense_to_bf16_rounding():
    torch.manual_seed(0)
    ref_model = WanTransformer3DModel(**WAN13_2BLOCKS).cuda()  # fp32 weights, dense fp32 attention: the reference
    ref_model.set_attention_backend("_native_math")
    args32 = gpu_inputs(torch.float32)
    dense = copy.deepcopy(ref_model).to(torch.bfloat16)
    dense.set_attention_backend("_native_cudnn")
    model = sd.enable_sla(copy.deepcopy(dense), topk=1.0, block_q=128, block_k=64)
    args16 = gpu_inputs(torch.bfloat16)

    def run(m, args):
        m.zero_grad()
        out = m(*args).sample
        g = torch.Generator(device="cuda").manual_seed(1)
        (out.float() * torch.randn(out.shape, generator=g, device="cuda")).sum().backward()
        names = [
            "blocks.0.attn1.to_q.weight",
            "blocks.0.attn1.to_v.weight",
            "blocks.1.attn1.to_k.weight",
            "patch_embedding.weight",
        ]
        params = dict(m.named_parameters())
        return out.detach(), {n: params[n].grad.detach() for n in names}

    ref, ref_g = run(ref_model, args32)
    den, den_g = run(dense, args16)
    got, got_g = run(model, args16)
    floor = 2 * ((ref.to(torch.bfloat16).double() - ref.double()).abs().max().item())
    assert _err(got, ref) <= 2 * _err(den, ref) + floor, (_err(got, ref), _err(den, ref))
    for name in ref_g:
        g_floor = 2 * ((ref_g[name].to(torch.bfloat16).double() - ref_g[name].double()).abs().max().item())
        assert _err(got_g[name], ref_g[name]) <= 2 * _err(den_g[name], ref_g[name]) + g_floor, name


@requires_cuda
def test_gpu_sla_trains_compiles_and_keeps_fp32_projections():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**WAN13_2BLOCKS).cuda().to(torch.bfloat16)
    sd.enable_sla(model, topk=0.1)
    randomise_projections(model, std=0.05)
    assert all(p.proj_l.weight.dtype == torch.float32 for p in sd.sla_processors(model).values())
    model.enable_gradient_checkpointing()
    args = gpu_inputs(torch.bfloat16)
    out = model(*args).sample
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        if ".processor.proj_l." in name:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        eager = model(*args).sample
        compiled = torch.compile(model, fullgraph=True)(*args).sample
    assert _err(compiled, eager) <= 0.02 * eager.abs().max().item(), _err(compiled, eager)
