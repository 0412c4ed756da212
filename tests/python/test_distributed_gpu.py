"""sla.distributed on several GPUs with NCCL: the sequence-parallel result and gradients against one GPU's.

Runs under torchrun only (one process per GPU), and skips otherwise or with fewer than 2 GPUs:

    torchrun --standalone --nproc-per-node=2 -m pytest -q tests/python/test_distributed_gpu.py
    torchrun --standalone --nproc-per-node=8 -m pytest -q tests/python/test_distributed_gpu.py

Every rank computes the single-GPU result on the full inputs itself (one seed for all ranks), then its shard
through the Ulysses path. Each head runs the same kernel on the same full sequence, so O, dq, dk, dv agree to the
kernels' run-to-run differences (bitwise where they are deterministic); the check allows twice the difference
between two single-GPU runs plus one bf16 rounding step of the largest value. dW, db (float32 sums over heads)
are compared to float32 rounding.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist

import sla
import sla.distributed as sd

_WORLD = int(os.environ.get("WORLD_SIZE", "1"))
pytestmark = [
    pytest.mark.skipif(
        "LOCAL_RANK" not in os.environ or _WORLD < 2,
        reason="run under torchrun with >= 2 processes: torchrun --standalone --nproc-per-node=N "
        "-m pytest tests/python/test_distributed_gpu.py",
    ),
    pytest.mark.skipif(
        not (torch.cuda.is_available() and torch.cuda.device_count() >= 2 and sla.cuda_available()),
        reason="needs >= 2 CUDA devices and the library's CUDA backend",
    ),
]


@pytest.fixture(scope="module")
def group():
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=datetime.timedelta(seconds=300))
    yield dist.group.WORLD
    dist.barrier()
    dist.destroy_process_group()


def _problem(b, h, length, d, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, g = (torch.randn(b, length, h, d, generator=gen, device="cuda").to(torch.bfloat16) for _ in range(4))
    w = 0.05 * torch.randn(d, d, generator=gen, device="cuda")
    bias = 0.05 * torch.randn(d, generator=gen, device="cuda")
    return q, k, v, g, w, bias


def _single(q, k, v, g, w, bias, layout, opts):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, w, bias)]
    ql, kl, vl, wl, bl = leaves
    tr = (lambda t: t) if layout == "BLHD" else (lambda t: t.transpose(1, 2))
    o = sla.sparse_linear_attention(tr(ql), tr(kl), tr(vl), layout=layout, proj_weight=wl, proj_bias=bl, **opts)
    (o.float() * tr(g).float()).sum().backward()
    return tr(o).detach(), [t.grad for t in leaves]


def _close(name, got, want, run_to_run):
    err = (got.float() - want.float()).abs().max().item()
    step = want.float().abs().max().item() * 2.0**-8  # one bf16 rounding step at the largest value
    bound = 2 * run_to_run + step
    print(f"  {name}: max |SP - single| = {err:.3g} (single vs single again: {run_to_run:.3g}, bound {bound:.3g})")
    assert err <= bound, f"{name}: sequence-parallel differs from one GPU by {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("layout", ["BLHD", "BHLD"])
@pytest.mark.parametrize("variant", ["global", "complement"])
@pytest.mark.parametrize("length", [8192, 8192 + 77], ids=["even", "ragged"])
def test_ulysses_matches_one_gpu(group, layout, variant, length):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    heads = 8 if 8 % world == 0 else world  # H / P heads per rank; 8 divides 2, 4, 8
    opts = dict(topk=0.1, block_q=128, block_k=64, variant=variant, negligible=0.1 if variant == "complement" else 0.0)
    q, k, v, g, w, bias = _problem(1, heads, length, 128, seed=1000 + length)
    o_ref, grads_ref = _single(q, k, v, g, w, bias, layout, opts)
    o_again, grads_again = _single(q, k, v, g, w, bias, layout, opts)
    lens = sd.shard_lengths(length, world)
    start = sum(lens[:rank])
    shard = slice(start, start + lens[rank])
    local = [t[:, shard].clone().requires_grad_(True) for t in (q, k, v)]
    wl, bl = w.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    tr = (lambda t: t) if layout == "BLHD" else (lambda t: t.transpose(1, 2))
    o = sd.ulysses_sparse_linear_attention(
        tr(local[0]),
        tr(local[1]),
        tr(local[2]),
        group=group,
        seq_lens=lens,
        reduce_proj_grad=True,
        layout=layout,
        proj_weight=wl,
        proj_bias=bl,
        **opts,
    )
    (o.float() * tr(g[:, shard]).float()).sum().backward()
    print(f"rank {rank}/{world} {layout} {variant} L={length}:")
    _close("O", tr(o).detach(), o_ref[:, shard], (o_again - o_ref)[:, shard].abs().max().item())
    for name, got, want, again in zip(("dq", "dk", "dv"), [t.grad for t in local], grads_ref[:3], grads_again[:3]):
        _close(name, got, want[:, shard], (again - want)[:, shard].abs().max().item())
    for name, got, want in zip(("dW", "db"), (wl.grad, bl.grad), grads_ref[3:]):
        torch.testing.assert_close(
            got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_diffusers_wan_context_parallel_matches_one_gpu(group):
    """Two blocks of the Wan2.1-1.3B configuration (12 heads) in bf16 under diffusers' Ulysses context parallelism
    (ulysses_anything, so that ragged shards are exercised too) against the same model on one GPU, under
    FlashAttention's rule: the error of either against the float32 model (SLA in bf16 there too: the processor
    computes CUDA float32 inputs in bf16) is compared, the context-parallel one may be at most twice the other."""
    pytest.importorskip("diffusers", reason="diffusers is not installed")
    import copy

    from diffusers import ContextParallelConfig, WanTransformer3DModel

    import sla.diffusers as sdf

    world = dist.get_world_size(group)
    if world > 12:
        pytest.skip(f"12 heads cannot be spread over {world} ranks")
    torch.manual_seed(0)
    reference = WanTransformer3DModel(**sdf.wan_config("1.3B", num_layers=2)).to("cuda")
    sdf.enable_sla(reference, topk=0.1)
    gen = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        for proc in sdf.sla_processors(reference).values():
            proc.proj_l.weight.copy_(0.05 * torch.randn(128, 128, generator=gen, device="cuda"))
            proc.proj_l.bias.copy_(0.05 * torch.randn(128, generator=gen, device="cuda"))
    single = copy.deepcopy(reference).to(torch.bfloat16)  # proj_l stays float32 (Float32Linear)
    parallel = copy.deepcopy(single)
    # 5 x 30 x 52 latents -> 5 x 15 x 26 = 1950 tokens: not divisible by 4 or 8.
    latents = torch.randn(1, 16, 5, 30, 52, generator=gen, device="cuda")
    text = torch.randn(1, 512, 4096, generator=gen, device="cuda")
    timestep = torch.tensor([500.0], device="cuda")
    with torch.no_grad():
        ref = reference(latents, timestep, text, return_dict=False)[0].float()
        lat16, text16 = latents.to(torch.bfloat16), text.to(torch.bfloat16)
        one = single(lat16, timestep, text16, return_dict=False)[0].float()
        parallel.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world, ulysses_anything=True))
        out = parallel(lat16, timestep, text16, return_dict=False)[0].float()
    err_one = (one - ref).abs().max().item()
    err_cp = (out - ref).abs().max().item()
    print(
        f"rank {dist.get_rank(group)}/{world} Wan 2 blocks bf16: max error vs float32, one GPU {err_one:.3g}, "
        f"context parallel {err_cp:.3g}; max |CP - one GPU| {(out - one).abs().max().item():.3g}"
    )
    assert err_cp <= 2 * err_one, f"context-parallel error {err_cp:.3g} > 2 x one GPU's {err_one:.3g}"
