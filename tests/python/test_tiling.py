"""3D token order (sla.tiling, docs/BLOCK_MAP.md section 5): a permutation, compact tiles, ragged grids without
padding, the round trip, and the module option equal to tiling by hand."""

from __future__ import annotations

import pytest
import torch

import sla

from conftest import make_qkv


@pytest.mark.parametrize("grid", [(4, 8, 8), (5, 6, 7), (21, 30, 52), (1, 3, 2)])
def test_permutation_round_trip_and_no_padding(grid):
    perm, inv = sla.tiling.tile_permutation(grid)
    n = grid[0] * grid[1] * grid[2]
    assert perm.numel() == n
    assert torch.equal(torch.sort(perm).values, torch.arange(n))
    assert torch.equal(perm[inv], torch.arange(n))
    x = torch.randn(2, 3, n, 5)
    assert torch.equal(sla.tiling.from_tiles(sla.tiling.to_tiles(x, grid), grid), x)


def test_full_tiles_are_compact_blocks():
    grid = (8, 12, 20)  # 2 x 3 x 5 full tiles of 4 x 4 x 4
    perm, _ = sla.tiling.tile_permutation(grid)
    t, h, w = perm // (12 * 20), (perm // 20) % 12, perm % 20
    for blk in range(perm.numel() // 64):
        sl = slice(64 * blk, 64 * blk + 64)
        for coord in (t, h, w):
            assert int(coord[sl].max() - coord[sl].min()) == 3


def test_ragged_grid_puts_full_tiles_first():
    grid = (5, 6, 8)  # full tiles: t 0..3, h 0..3, w 0..7 -> 1 * 1 * 2 = 2; the rest is border
    perm, _ = sla.tiling.tile_permutation(grid)
    t, h = perm // 48, (perm // 8) % 6
    assert bool((t[:128] < 4).all() and (h[:128] < 4).all())


def test_bad_grid_and_length():
    with pytest.raises(ValueError, match="grid"):
        sla.tiling.tile_permutation((4, 4))
    with pytest.raises(ValueError, match="tile"):
        sla.tiling.tile_permutation((4, 4, 4), (0, 4, 4))
    with pytest.raises(ValueError, match="video_shape"):
        sla.tiling.to_tiles(torch.randn(1, 1, 10, 4), (2, 2, 2))


@pytest.mark.parametrize("layout", ["BHLD", "BLHD"])
def test_module_option_equals_tiling_by_hand(layout):
    grid = (4, 4, 8)
    q, k, v = make_qkv(1, 2, 128, 128, 16, layout=layout)
    layer = sla.SparseLinearAttention(16, 0.5, video_shape=grid, layout=layout)
    with torch.no_grad():
        layer.proj_l.weight.normal_()
    o = layer(q, k, v)
    dim = 2 if layout == "BHLD" else 1
    qt, kt, vt = (sla.tiling.to_tiles(t, grid, dim=dim) for t in (q, k, v))
    ref = sla.sparse_linear_attention(
        qt, kt, vt, topk=0.5, layout=layout, proj_weight=layer.proj_l.weight, proj_bias=layer.proj_l.bias
    )
    assert torch.equal(o, sla.tiling.from_tiles(ref, grid, dim=dim))
