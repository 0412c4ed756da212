"""The 3D token order applied once per Wan transformer instead of once per attention layer.

Per layer, tiling costs two gathers of Q, K, V and one of O (docs/PERF.md: 61% of an SLA layer at W1). But every
other operation of a Wan transformer treats tokens one by one: the patch embedding (a strided Conv3d), the layer and
RMS norms, every linear layer, the feed-forward, cross-attention to the text (each query row attends the same text
keys) and the output head. Self-attention is permutation-equivariant once the rotary tables travel with their
tokens. So the tokens can be put into tile order once, right after the patch embedding (with the RoPE tables), and
put back once, right after the output head: every SLA layer then sees tiled Q, K, V directly, and dense layers
compute the same rows in another order. The result equals the per-layer gathers (tests/python/test_diffusers.py).

Installed by ``enable_sla(..., tile=(t, h, w))`` as forward hooks on the transformer's ``rope``,
``patch_embedding`` and ``proj_out`` (torch.compile traces them; no gather is left inside the blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from .. import tiling


class TokenOrder:
    """Forward hooks that reorder a Wan transformer's tokens into ``tile``-shaped groups (sla.tiling) after the
    patch embedding and back after the output head. The post-patch grid (frames, height, width) is read from each
    call's input, so one transformer serves any resolution."""

    def __init__(self, tile: Sequence[int]):
        if isinstance(tile, (str, bytes)) or not isinstance(tile, Sequence):
            raise TypeError(f"tile: expected (t, h, w), three ints >= 1, or None, got {tile!r}")
        tiling._check_grid("tile", tile)
        self.tile = tuple(int(x) for x in tile)
        self.grid: Optional[tuple[int, int, int]] = None
        self._handles: list = []

    def check(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        """Raises if the order cannot be installed on `transformer` (changing nothing); returns its patch size."""
        for name in ("rope", "patch_embedding", "proj_out"):
            if not isinstance(getattr(transformer, name, None), torch.nn.Module):
                raise TypeError(
                    f"tile: the 3D token order needs a Wan transformer with a `{name}` module; "
                    f"{type(transformer).__name__} has none"
                )
        patch = getattr(getattr(transformer, "config", None), "patch_size", None)
        if not isinstance(patch, Sequence) or len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
            raise TypeError(
                f"tile: the 3D token order needs a Wan transformer whose config.patch_size is (t, h, w); "
                f"{type(transformer).__name__} has {patch!r}"
            )
        return tuple(int(p) for p in patch)  # type: ignore[return-value]

    def install(self, transformer: torch.nn.Module) -> "TokenOrder":
        self._patch = self.check(transformer)
        self._handles = [
            transformer.register_forward_pre_hook(self._check_call, with_kwargs=True),
            transformer.rope.register_forward_hook(self._rope),
            transformer.patch_embedding.register_forward_hook(self._patch_embedding),
            transformer.proj_out.register_forward_hook(self._proj_out),
        ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_call(self, module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if timestep is not None and timestep.ndim == 2:
            # Wan2.2 TI2V: one timestep per token, whose modulations would need the same reordering.
            raise NotImplementedError("tile: the 3D token order does not support per-token timesteps (Wan2.2 TI2V)")
        parallel = getattr(module, "_parallel_config", None)  # set by diffusers' enable_parallelism
        if getattr(parallel, "context_parallel_config", None) is not None:
            # Its hooks shard the rope tables and the hidden states on their own order of the same hooks' outputs.
            raise NotImplementedError("tile: the 3D token order does not support context parallelism yet")
        return None

    def _perm(self, device):
        return tiling.tile_permutation(self.grid, self.tile, device)

    def _rope(self, module, args, output):
        # The rope module sees the latents (B, C, F, H, W): the grid of this call is set here, before the blocks.
        f, h, w = args[0].shape[2:]
        pt, ph, pw = self._patch
        self.grid = (f // pt, h // ph, w // pw)
        perm, _ = self._perm(output[0].device)
        return tuple(torch.index_select(t, 1, perm) for t in output)  # (1, L, 1, D) cos and sin tables

    def _patch_embedding(self, module, args, output):
        # (B, C, F', H', W') -> the same shape with its flattened tokens in tile order; the model's own
        # flatten(2).transpose(1, 2) then yields (B, L, C) tokens in tile order.
        perm, _ = self._perm(output.device)
        return torch.index_select(output.flatten(2), 2, perm).view(output.shape)

    def _proj_out(self, module, args, output):
        _, inv = self._perm(output.device)
        return torch.index_select(output, 1, inv)  # back to raster order before the model unpatchifies


def plan_token_order(transformer: torch.nn.Module, tile: Optional[Sequence[int]]) -> Optional[TokenOrder]:
    """Checks ``tile`` and that it can be installed on `transformer`, changing nothing: returns the TokenOrder for
    install_token_order (None: raster order)."""
    if tile is None:
        return None
    order = TokenOrder(tile)
    order.check(transformer)
    return order


def install_token_order(transformer: torch.nn.Module, order: Optional[TokenOrder]) -> None:
    """Installs a checked TokenOrder of plan_token_order on `transformer` (None: removes the one it has). Keeps
    the installed order when it has the same tile."""
    current = getattr(transformer, "_sla_token_order", None)
    if current is not None:
        if order is not None and current.tile == order.tile:
            return
        current.remove()
        transformer._sla_token_order = None
    if order is not None:
        transformer._sla_token_order = order.install(transformer)


def set_token_order(transformer: torch.nn.Module, tile: Optional[Sequence[int]]) -> None:
    """Installs (``tile`` = (t, h, w)) or removes (None) the model-level 3D token order on one transformer; checks
    first, so a call that raises changes nothing."""
    install_token_order(transformer, plan_token_order(transformer, tile))


def token_order(transformer: torch.nn.Module) -> Optional[tuple[int, int, int]]:
    """The tile of the transformer's model-level token order, or None (raster order)."""
    current = getattr(transformer, "_sla_token_order", None)
    return None if current is None else current.tile


__all__ = ["TokenOrder", "install_token_order", "plan_token_order", "set_token_order", "token_order"]
