"""sla.block_map against the reference block map (docs/SPEC.md section 1, invariant 7.9)."""

from __future__ import annotations

import pytest
import torch

import sla
from sla._shapes import block_map_sizes

import reference
from conftest import make_qkv


def assert_is_topk(bmap: sla.BlockMap, ref: reference.RefBlockMap, t: int, tol: float = 1e-6):
    """Row by row: exactly T sorted, distinct indices, and no unselected block scores above a selected one (up to
    `tol`, the fp32 pooling of docs/SPEC.md 1.2 may reorder near-ties); where the gap is clear, the sets are equal."""
    assert bmap.lut.shape[-1] == t
    assert torch.all(bmap.count == t)
    lut = bmap.lut.long()
    assert torch.all(lut[..., 1:] > lut[..., :-1]), "LUT rows must be ascending and distinct"
    assert torch.all((lut >= 0) & (lut < bmap.k_blocks))
    selected = reference.mask_from_lut(bmap.lut, bmap.count, bmap.k_blocks)
    scores = ref.scores
    scale = scores.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    min_sel = scores.masked_fill(~selected, float("inf")).amin(-1)
    max_unsel = scores.masked_fill(selected, -float("inf")).amax(-1)
    assert torch.all(min_sel >= max_unsel - tol * scale[..., 0])
    clear = (min_sel - max_unsel) > tol * scale[..., 0]
    assert torch.equal(selected[clear], ref.critical[clear])


@pytest.mark.parametrize("lq,lk,bq,bk", [(256, 256, 64, 64), (200, 333, 64, 128), (130, 70, 128, 64), (50, 40, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["BHLD", "BLHD"])
def test_matches_reference(lq, lk, bq, bk, dtype, layout):
    q, k, _ = make_qkv(2, 3, lq, lk, 32, dtype=dtype, layout=layout)
    topk = 0.4
    bmap = sla.block_map(q, k, topk=topk, block_q=bq, block_k=bk, layout=layout)
    qh, kh = (t if layout == "BHLD" else t.transpose(1, 2) for t in (q, k))
    ref = reference.block_map(qh, kh, bq, bk, topk)
    nk = -(-lk // bk)
    t, _ = reference.block_counts(nk, topk, 0.0, "global")
    assert bmap.k_blocks == nk and bmap.q_blocks == -(-lq // bq)
    assert bmap.block_q == bq and bmap.block_k == bk
    assert_is_topk(bmap, ref, t)
    assert bmap.density == t / nk
    assert bmap.sparsity == 1 - t / nk


def test_ties_go_to_the_lower_index():
    q, _, _ = make_qkv(1, 2, 256, 512, 16)
    # Every key row equal: smooth-K makes every pooled key zero, so every score ties.
    k = torch.randn(1, 2, 1, 16, dtype=torch.float64).expand(1, 2, 512, 16).contiguous()
    bmap = sla.block_map(q, k, topk=0.375, block_q=64, block_k=64)
    expected = torch.arange(3, dtype=torch.int32).expand(1, 2, 4, 3)
    assert torch.equal(bmap.lut, expected)


def test_partial_blocks_divide_by_their_real_count():
    # Only the ragged tail block of K is special: a mean over its 10 real rows scores highest, a sum over 64 padded
    # rows (or a mean over 64) would not.
    q = torch.ones(1, 1, 64, 4, dtype=torch.float64)
    k = torch.zeros(1, 1, 3 * 64 + 10, 4, dtype=torch.float64)
    k[0, 0, :64] = 1.0
    k[0, 0, 192:] = 2.0
    # Mean over K: (64 + 20) / 202 = 0.42. Smooth block means: block 0 0.58, tail 1.58; a tail divided by 64 rows
    # would give 0.25 and lose to block 0.
    k[0, 0, 64:192] = torch.linspace(-0.1, 0.1, 128, dtype=torch.float64)[:, None]
    bmap = sla.block_map(q, k, topk=0.25, block_q=64, block_k=64)
    ref = reference.block_map(q, k, 64, 64, 0.25)
    assert bmap.lut.shape[-1] == 1
    assert int(bmap.lut[0, 0, 0, 0]) == 3 == int(ref.scores[0, 0, 0].argmax())


@pytest.mark.parametrize("lk,bk,topk", [(197, 64, 0.2), (64, 64, 0.01), (1000, 64, 1.0), (640, 128, 0.5)])
def test_count_is_clamped(lk, bk, topk):
    q, k, _ = make_qkv(1, 1, 64, lk, 8)
    bmap = sla.block_map(q, k, topk=topk, block_q=64, block_k=bk)
    nk = -(-lk // bk)
    expected_t = min(max(int(topk * nk // 1), 1), nk)
    assert bmap.real_topk == expected_t
    assert block_map_sizes(64, lk, 64, bk, topk, 0.0, "global").critical == expected_t


@pytest.mark.parametrize("negligible", [0.2, 0.5])
def test_negligible_set(negligible):
    q, k, _ = make_qkv(2, 2, 300, 700, 16)
    topk = 0.25
    bmap = sla.block_map(q, k, topk=topk, block_q=64, block_k=64, variant="complement", negligible=negligible)
    ref = reference.block_map(q, k, 64, 64, topk, negligible, "complement")
    nk = bmap.k_blocks
    t, tn = reference.block_counts(nk, topk, negligible, "complement")
    assert bmap.negl_lut.shape[-1] == tn > 0
    assert torch.all(bmap.negl_count == tn)
    crit = reference.mask_from_lut(bmap.lut, bmap.count, nk)
    negl = reference.mask_from_lut(bmap.negl_lut, bmap.negl_count, nk)
    assert not torch.any(crit & negl)
    assert torch.equal(negl.sum(-1), torch.full_like(negl.sum(-1), tn))
    # Negligible blocks score no higher than any marginal one.
    marginal = ~crit & ~negl
    max_negl = ref.scores.masked_fill(~negl, -float("inf")).amax(-1)
    min_marg = ref.scores.masked_fill(~marginal, float("inf")).amin(-1)
    assert torch.all(max_negl <= min_marg + 1e-6 * ref.scores.abs().amax(-1))
    assert bmap.negligible_fraction == tn / nk


def inverse_of(lut, count, nk):
    """(offsets, indices) per (b, h) computed by brute force."""
    b, h, nq, _ = lut.shape
    offsets = torch.zeros(b, h, nk + 1, dtype=torch.int32)
    indices = []
    for bi in range(b):
        row = []
        for hi in range(h):
            lists = [[] for _ in range(nk)]
            for i in range(nq):
                for j in lut[bi, hi, i, : count[bi, hi, i]].tolist():
                    lists[j].append(i)
            flat = [i for lst in lists for i in lst]
            offsets[bi, hi, 1:] = torch.tensor([len(lst) for lst in lists]).cumsum(0)
            row.append(flat)
        indices.append(row)
    return offsets, indices


def check_inverse(offsets, index, lut, count, nk):
    ref_off, ref_idx = inverse_of(lut, count, nk)
    assert torch.equal(offsets, ref_off)
    for bi in range(lut.shape[0]):
        for hi in range(lut.shape[1]):
            n = int(ref_off[bi, hi, -1])
            assert index[bi, hi, :n].tolist() == ref_idx[bi][hi]


def test_inverse_tables_of_the_predicted_map():
    q, k, _ = make_qkv(2, 2, 500, 450, 16)
    bmap = sla.block_map(q, k, topk=0.3, block_q=64, block_k=64, variant="complement", negligible=0.3)
    check_inverse(bmap.inv_offset, bmap.inv_index, bmap.lut, bmap.count, bmap.k_blocks)
    # The negligible class's inverse tables are not built: no backward reads them.
    assert bmap.negl_inv_offset.shape == (2, 2, 0) and bmap.negl_inv_index.shape == (2, 2, 0)


def test_caller_lut_with_short_rows():
    nq, nk, t = 5, 7, 4
    mask = torch.rand(2, 3, nq, nk) < 0.5
    mask[..., 0] = True  # at least one block per row
    # Keep at most T per row.
    keep = mask.cumsum(-1) <= t
    mask &= keep
    lut, count = reference.lut_from_mask(mask)
    lut = torch.nn.functional.pad(lut, (0, t - lut.shape[-1]))
    bmap = sla.BlockMap.from_lut(lut, count=count, k_blocks=nk, block_q=64, block_k=64)
    assert bmap.has_inverse
    check_inverse(bmap.inv_offset, bmap.inv_index, lut, count, nk)


def test_inference_map_has_no_inverse_tables():
    q, k, _ = make_qkv(1, 2, 128, 128, 16)
    bmap = sla.block_map(q, k, topk=0.5, with_inverse=False)
    assert not bmap.has_inverse
    full = bmap.with_inverse()
    ref = sla.block_map(q, k, topk=0.5)
    assert torch.equal(full.inv_offset, ref.inv_offset) and torch.equal(full.inv_index, ref.inv_index)
