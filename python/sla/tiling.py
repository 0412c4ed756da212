"""Token order for video: raster order (t, h, w) to 3D tiles and back (docs/BLOCK_MAP.md, "Token order").

A block of 64 consecutive raster tokens is a thin strip of one frame row; after tiling with (4, 4, 4) it is a
compact 4 x 4 x 4 cube, so mean pooling summarises a coherent region and the block map separates local from far
blocks better. The permutation is a gather index, cached per (grid, tile, device).

Ragged grids are not padded: the full tiles come first (in raster order of the tile grid, each tile's tokens in
raster order), then the partial tiles at the borders (same order). With tile volume equal to the block size, every
full tile is exactly one block; the border tokens fill the last blocks. The sequence length never changes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


def _check_grid(name: str, value: Sequence[int]) -> tuple[int, int, int]:
    if len(value) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
        raise ValueError(f"{name}: expected three ints >= 1 (t, h, w), got {value!r}")
    return tuple(int(x) for x in value)  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _permutation_cpu(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    t, h, w = grid
    tt, th, tw = tile
    raster = torch.arange(t * h * w, dtype=torch.int64).view(t, h, w)
    full, partial = [], []
    for a in range(0, t, tt):
        for b in range(0, h, th):
            for c in range(0, w, tw):
                cube = raster[a : a + tt, b : b + th, c : c + tw].reshape(-1)
                (full if cube.numel() == tt * th * tw else partial).append(cube)
    perm = torch.cat(full + partial)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=torch.int64)
    return perm, inv


_DEVICE_CACHE: dict = {}


def tile_permutation(
    grid: Sequence[int], tile: Sequence[int] = (4, 4, 4), device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inv), int64 on `device`: tiled[i] = raster[perm[i]] and raster[j] = tiled[inv[j]]."""
    g = _check_grid("grid", grid)
    tl = _check_grid("tile", tile)
    key = (g, tl, str(torch.device(device)))
    hit = _DEVICE_CACHE.get(key)
    if hit is None:
        perm, inv = _permutation_cpu(g, tl)
        hit = (perm.to(device), inv.to(device))
        _DEVICE_CACHE[key] = hit
    return hit


def _gather(x: torch.Tensor, index: torch.Tensor, dim: int, grid) -> torch.Tensor:
    n = grid[0] * grid[1] * grid[2]
    if x.shape[dim] != n:
        raise ValueError(
            f"video_shape: expected the sequence dim ({x.shape[dim]} tokens) to equal t * h * w = {n} "
            f"for grid {tuple(grid)}"
        )
    return torch.index_select(x, dim, index)


def to_tiles(x: torch.Tensor, grid: Sequence[int], tile: Sequence[int] = (4, 4, 4), dim: int = 2) -> torch.Tensor:
    """Reorders the sequence dim `dim` of x from raster (t, h, w) order to tile order (a gather; a new tensor)."""
    perm, _ = tile_permutation(grid, tile, x.device)
    return _gather(x, perm, dim, grid)


def from_tiles(x: torch.Tensor, grid: Sequence[int], tile: Sequence[int] = (4, 4, 4), dim: int = 2) -> torch.Tensor:
    """The inverse of to_tiles."""
    _, inv = tile_permutation(grid, tile, x.device)
    return _gather(x, inv, dim, grid)


__all__ = ["from_tiles", "tile_permutation", "to_tiles"]
