"""Validation of the Python-level options (strings and flags) before they reach the library.

The values of numeric options (block sizes, topk, negligible, eps ranges; shapes, devices) are checked by the
library itself, whose messages name the argument. Checked here: what the library never sees (strings, Python
types: None or a list where a number or a tensor belongs would otherwise fail inside float() or the op schema
with a message that names nothing), and dtypes that the op layer would otherwise describe in its own terms.
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


_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_attention_tensor(name: str, value: object) -> torch.Tensor:
    """q, k, v (and grad_o): a floating-point tensor."""
    t = check_tensor(name, value)
    if t.dtype not in _FLOATING:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def check_number(name: str, value: object, expected: str) -> float:
    """A real number (bool excluded: True is not a fraction); `expected` describes the valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number {expected}, got {value!r} ({type(value).__name__})")
    return float(value)


def check_rule_numbers(negligible: object, negligible_threshold: object, max_negligible: object) -> None:
    """The plain-number options of a block rule (topk and top_p, which may be per head, are BlockRule's)."""
    check_number("negligible", negligible, "in [0, 1 - topk]")
    check_number("negligible_threshold", negligible_threshold, "in [0, 1)")
    if max_negligible is not None:
        check_number("max_negligible", max_negligible, "in [0, 1] or None")


def check_scale(scale: object) -> None:
    """The softmax scale: None (1/sqrt(D)) or a finite number > 0 (bool excluded). The library reads 0 as
    "1/sqrt(D)"; in Python that meaning belongs to None alone."""
    if scale is not None and (
        isinstance(scale, bool) or not (isinstance(scale, (int, float)) and 0 < scale < float("inf"))
    ):
        raise ValueError(f"scale: expected a finite number > 0 or None, got {scale!r}")


# The library's block sizes (src/core/validate.cpp, is_allowed_block_size), checked here as well so that a module,
# a processor or enable_sla refuses a bad size when it is given instead of at the first forward.
BLOCK_SIZES = (16, 32, 64, 128)


def check_block_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}: expected an int block size (16, 32, 64 or 128), got {value!r} ({type(value).__name__})"
        )
    if value not in BLOCK_SIZES:
        raise ValueError(f"{name}: expected 16, 32, 64 or 128, got {value}")
    return value


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return value


def check_projection(name: str, value: object) -> None:
    """proj_weight / proj_bias: None or a floating-point tensor (it is computed in float32 or float64)."""
    if value is None:
        return
    t = check_tensor(name, value)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        # An empty projection would otherwise reach the library as "no projection" or a shape error naming Dv.
        expected = "(Dv, Dv)" if name.endswith("weight") else "(Dv,)"
        raise ValueError(
            f"{name}: expected a {expected} tensor (Dv >= 1), got an empty tensor of shape {tuple(t.shape)}"
        )


def check_same_device(*named: tuple) -> None:
    """Every (name, tensor or None) on the device of the first tensor."""
    ref_name, ref = None, None
    for name, t in named:
        if t is None:
            continue
        if ref is None:
            ref_name, ref = name, t
        elif t.device != ref.device:
            raise ValueError(f"{name}: expected device {ref.device} like {ref_name}, got {t.device}")


def check_rank4(name: str, t: torch.Tensor, layout: str) -> None:
    if t.dim() != 4:
        dims = "(B, H, L, D)" if layout == "BHLD" else "(B, L, H, D)"
        raise ValueError(f"{name}: expected 4 dimensions {dims} for layout {layout!r}, got {t.dim()}")


def to_bhld(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The logical (B, H, L, D) view of a tensor in `layout`; a view, never a copy."""
    return t if layout == "BHLD" else t.transpose(1, 2)


def from_bhld(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t if layout == "BHLD" else t.transpose(1, 2)
