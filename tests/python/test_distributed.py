"""sla.distributed: Ulysses sequence-parallel SLA on the CPU with gloo, against the single-process result.

Four processes are spawned once (FileStore rendezvous, no ports); they form groups of 2, 3 and 4 ranks and run the
cases of sp_worker.py, each comparing O and the gradients of q, k, v, W, b with one process's (bitwise for O, dq,
dk, dv; to rounding for dW, db, which are sums over heads), then run a tiny diffusers Wan with SLA under
diffusers' Ulysses context parallelism over all four (when diffusers is installed). Results come back per case as
JSON.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import sp_worker
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sla.distributed as sd

WORLD = 4
DEADLINE_S = 240  # the whole spawn; the gloo timeout inside is 120 s per collective

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("sp"))
    store = os.path.join(out_dir, "store")
    ctx = mp.start_processes(
        sp_worker.run_group, args=(WORLD, store, out_dir), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} gloo processes did not finish within {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    merged: dict[int, dict] = {}
    for rank in range(WORLD):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            merged[rank] = json.load(f)
    return merged


@pytest.mark.parametrize("case", sp_worker.cases(), ids=lambda c: c.name)
def test_sequence_parallel_matches_one_process(results, case):
    for rank in range(case.world):
        assert case.name in results[rank], f"rank {rank} did not run {case.name}"
        assert results[rank][case.name] is None, f"rank {rank} of {case.world}:\n{results[rank][case.name]}"


def test_bad_input_raises_on_every_rank(results):
    for rank in range(3):
        assert results[rank].get("errors", "not run") is None, f"rank {rank}:\n{results[rank].get('errors')}"


@pytest.mark.parametrize("case", sorted(sp_worker.WAN_CASES))
def test_diffusers_context_parallel_wan_matches_one_process(results, case):
    for rank in range(WORLD):
        outcome = results[rank].get(case, f"rank {rank} did not run it")
        if isinstance(outcome, str) and outcome.startswith("skip:"):
            pytest.skip(outcome[len("skip:") :].strip())
        assert outcome is None, f"rank {rank} of {WORLD}:\n{outcome}"


def test_split_helpers():
    assert sd.shard_lengths(101, 3) == [len(c) for c in torch.arange(101).tensor_split(3)] == [34, 34, 33]
    assert sd.head_counts(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError, match=r"needs at least 4 heads.*H = 3"):
        sd.head_counts(3, 4)


def test_balanced_head_order_deals_costs_in_snake_order():
    costs = [1.0, 8.0, 3.0, 6.0, 2.0, 7.0, 4.0, 5.0]
    order = sd.balanced_head_order(costs, 2)
    assert sorted(order) == list(range(8))
    per_rank = [sum(costs[h] for h in order[:4]), sum(costs[h] for h in order[4:])]
    # Snake over 8 > 7 > 6 > 5 > 4 > 3 > 2 > 1: rank 0 gets 8, 5, 4, 1 and rank 1 gets 7, 6, 3, 2.
    assert per_rank == [18.0, 18.0]
    equal = sd.balanced_head_order([1.0] * 7, 3)
    assert sorted(equal) == list(range(7)) and len(equal) == 7
    with pytest.raises(ValueError, match="head_order"):
        sd._order_tensor([0, 0, 1], 3, "cpu")
