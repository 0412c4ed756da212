"""Validation of the Python-level options (strings and flags) before they reach the library.

Everything numeric (block sizes, topk, negligible, scale, eps, shapes, dtypes, devices) is checked by the library
itself, whose messages name the argument; only what the library never sees is checked here.
"""

from __future__ import annotations

import torch

VARIANTS = ("global", "complement")
FEATURE_MAPS = ("softmax", "elu", "relu")
LAYOUTS = ("BHLD", "BLHD")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {expected}, got {value!r}")
    return value


def check_feature_map(value: object) -> str:
    if value == "hedgehog":
        # The public module's hedgehog map is a learnable per-head MLP; the fused kernels implement fixed maps only.
        raise NotImplementedError(
            "feature_map: 'hedgehog' is not implemented (its learnable map does not fit the fused kernels); "
            "expected one of 'softmax', 'elu', 'relu'"
        )
    return check_choice("feature_map", value, FEATURE_MAPS)


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_rank4(name: str, t: torch.Tensor, layout: str) -> None:
    if t.dim() != 4:
        dims = "(B, H, L, D)" if layout == "BHLD" else "(B, L, H, D)"
        raise ValueError(f"{name}: expected 4 dimensions {dims} for layout {layout!r}, got {t.dim()}")


def to_bhld(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The logical (B, H, L, D) view of a tensor in `layout`; a view, never a copy."""
    return t if layout == "BHLD" else t.transpose(1, 2)


def from_bhld(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t if layout == "BHLD" else t.transpose(1, 2)
