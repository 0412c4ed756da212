"""Block-selection rules of the block map (docs/BLOCK_MAP.md): fixed or per-head topk, cumulative-mass (top-p)
selection and the negligible threshold, as one value that the functional API, the module and calibration files
share. The library does the selection; this file only checks and forwards the parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

PerHead = Union[float, Sequence[float], torch.Tensor]


# The library's limit (src/core/validate.cpp, kNegligibleSlack): negligible may exceed 1 - topk by rounding only.
_NEGLIGIBLE_SLACK = 1e-12


def _per_head(name: str, value: PerHead) -> tuple[float, ...] | float:
    """A float stays a float; a sequence or 1-D tensor becomes a tuple of floats (one per head)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return float(value)
        if value.dim() != 1 or value.numel() == 0:
            raise ValueError(
                f"{name}: expected a float or one value per head (a non-empty 1-D tensor), got shape "
                f"{tuple(value.shape)}"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name}: expected real numbers per head, got a tensor of dtype {value.dtype}")
        return tuple(float(x) for x in value.detach().cpu().double().tolist())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError(f"{name}: expected a float or one value per head, got an empty sequence")
        for x in value:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise TypeError(f"{name}: expected numbers in the per-head sequence, got {x!r}")
        return tuple(float(x) for x in value)
    raise TypeError(
        f"{name}: expected a number in (0, 1] (or one per head: a sequence or a 1-D tensor), got {value!r} "
        f"({type(value).__name__})"
    )


def _check_fractions(name: str, value: Union[float, tuple[float, ...]]) -> None:
    """Every value in (0, 1] and finite: the library's range for topk and top_p (NaN fails the comparison)."""
    values = value if isinstance(value, tuple) else (value,)
    for h, x in enumerate(values):
        if not (0.0 < x <= 1.0):
            where = f"{name}[{h}]" if isinstance(value, tuple) else name
            raise ValueError(f"{where}: expected a finite value in (0, 1], got {x}")


def _check_number(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number {expected}, got {value!r} ({type(value).__name__})")
    return float(value)


@dataclass(frozen=True)
class BlockRule:
    """How many key blocks each query block attends to exactly, and which ones both branches skip.

    Exactly one of ``topk`` (fraction of key blocks; a float or one per head) and ``top_p`` (share of the pooled
    attention to cover per query block; a float or one per head) is set. ``min_blocks``/``max_blocks`` clamp the
    top_p count (max_blocks None means Nk; it is also the LUT width). ``negligible`` (fixed fraction) or
    ``negligible_threshold`` (pooled share below which a block is skipped, at most ``max_negligible`` of the key
    blocks) choose the complement variant's negligible set.

    Every value is checked when the rule is made (``BlockRule(...)``, ``make``, ``from_dict``), against the
    library's own ranges, so that a bad rule fails where it is given and not at the first forward. Whether the
    rule fits a layer (the variant, the number of heads) is checked where the rule meets the layer.
    """

    topk: Optional[Union[float, tuple[float, ...]]] = None
    top_p: Optional[Union[float, tuple[float, ...]]] = None
    min_blocks: int = 1
    max_blocks: Optional[int] = None
    negligible: float = 0.0
    negligible_threshold: float = 0.0
    max_negligible: Optional[float] = None

    def __post_init__(self):
        topk, top_p = self.topk, self.top_p
        if topk is None and top_p is None:
            # The fixed rule's message (and type), as for any missing number; top_p is the alternative.
            raise TypeError(
                "topk: expected a number in (0, 1], got None (NoneType); or give top_p= for the cumulative-mass rule"
            )
        if topk is not None and top_p is not None:
            raise ValueError(
                "topk/top_p: expected exactly one of them (topk: fraction of key blocks; top_p: share "
                f"of the pooled attention), got topk={topk!r} and top_p={top_p!r}"
            )
        for name, v in (("min_blocks", self.min_blocks), ("max_blocks", self.max_blocks)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"{name}: expected an int, got {v!r} ({type(v).__name__})")
        if topk is not None and (self.min_blocks != 1 or self.max_blocks is not None):
            raise ValueError("min_blocks/max_blocks: only the top_p rule clamps counts; got them with topk")
        if self.min_blocks < 1:
            raise ValueError(f"min_blocks: expected an int >= 1, got {self.min_blocks}")
        if self.max_blocks is not None and self.max_blocks < self.min_blocks:
            raise ValueError(
                f"max_blocks: expected None (meaning Nk) or an int >= min_blocks = {self.min_blocks}, "
                f"got {self.max_blocks}"
            )
        # Normalised in place (the dataclass is frozen): floats, or tuples of floats per head.
        if topk is not None:
            topk = _per_head("topk", topk)
            _check_fractions("topk", topk)
            object.__setattr__(self, "topk", topk)
        if top_p is not None:
            # The op reads top_p == 0 as "the topk rule": a zero (or NaN) here must not select it silently.
            top_p = _per_head("top_p", top_p)
            _check_fractions("top_p", top_p)
            object.__setattr__(self, "top_p", top_p)
        negligible = _check_number("negligible", self.negligible, "in [0, 1 - topk]")
        threshold = _check_number("negligible_threshold", self.negligible_threshold, "in [0, 1)")
        cap = self.max_negligible
        if cap is not None:
            cap = _check_number("max_negligible", cap, "in [0, 1] or None")
        largest = 0.0 if topk is None else max(topk) if isinstance(topk, tuple) else topk
        if not (0.0 <= negligible <= 1.0 - largest + _NEGLIGIBLE_SLACK):
            raise ValueError(
                f"negligible: expected a finite value in [0, 1 - topk] = [0, {1.0 - largest}], got {negligible}"
            )
        if not (0.0 <= threshold < 1.0):
            raise ValueError(f"negligible_threshold: expected a finite value in [0, 1), got {threshold}")
        if threshold > 0.0 and negligible != 0.0:
            raise ValueError(
                f"negligible: expected 0 when negligible_threshold is set (one negligible rule at a time), "
                f"got {negligible}"
            )
        if cap is not None and not (0.0 <= cap <= 1.0):
            raise ValueError(f"max_negligible: expected None or a finite value in [0, 1], got {cap}")
        if cap is not None and threshold == 0.0:
            raise ValueError(
                f"max_negligible: expected None without negligible_threshold (only the threshold rule uses it), "
                f"got {cap}"
            )
        object.__setattr__(self, "negligible", negligible)
        object.__setattr__(self, "negligible_threshold", threshold)
        object.__setattr__(self, "max_negligible", cap)

    @classmethod
    def make(
        cls,
        topk: Optional[PerHead] = None,
        top_p: Optional[PerHead] = None,
        min_blocks: int = 1,
        max_blocks: Optional[int] = None,
        negligible: float = 0.0,
        negligible_threshold: float = 0.0,
        max_negligible: Optional[float] = None,
    ) -> "BlockRule":
        """The rule of these options (the keyword arguments of sla.block_map); every value is checked."""
        return cls(
            topk=topk,
            top_p=top_p,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            negligible=negligible,
            negligible_threshold=negligible_threshold,
            max_negligible=max_negligible,
        )

    @property
    def heads(self) -> Optional[int]:
        """The number of heads a per-head rule is for (None: one value for every head)."""
        for v in (self.topk, self.top_p):
            if isinstance(v, tuple):
                return len(v)
        return None

    def check_layer(self, variant: str, heads: Optional[int] = None, name: str = "rule") -> None:
        """Raises unless the rule fits a layer of this variant and number of heads (None: not known)."""
        if variant != "complement":
            for field in ("negligible", "negligible_threshold"):
                if getattr(self, field) != 0.0:
                    raise ValueError(
                        f"{name}: {field} = {getattr(self, field)} needs variant 'complement' (only the complement "
                        f"variant skips blocks), got variant {variant!r}"
                    )
        if heads is not None and self.heads is not None and self.heads != heads:
            raise ValueError(f"{name}: expected H = {heads} values (one per head) or one value, got {self.heads}")

    @property
    def is_fixed(self) -> bool:
        """One topk for every head and no negligible threshold: the public module's rule."""
        return isinstance(self.topk, float) and self.negligible_threshold == 0.0

    def op_args(self) -> dict:
        """Keyword arguments of torch.ops.sla.block_map (the library checks every value and names it)."""
        head_topk = list(self.topk) if isinstance(self.topk, tuple) else []
        head_top_p = list(self.top_p) if isinstance(self.top_p, tuple) else []
        thr = self.negligible_threshold
        return dict(
            topk=self.topk if isinstance(self.topk, float) else 0.05,
            negligible=self.negligible,
            head_topk=head_topk,
            top_p=self.top_p if isinstance(self.top_p, float) else 0.0,
            head_top_p=head_top_p,
            min_blocks=self.min_blocks if self.top_p is not None else 1,
            max_blocks=(self.max_blocks or 0) if self.top_p is not None else 0,
            negligible_threshold=thr,
            max_negligible=(1.0 if self.max_negligible is None else self.max_negligible) if thr > 0 else 0.0,
        )

    def to_dict(self) -> dict:
        d = {}
        for key in ("topk", "top_p"):
            v = getattr(self, key)
            if v is not None:
                d[key] = list(v) if isinstance(v, tuple) else v
        if self.top_p is not None:
            d["min_blocks"] = self.min_blocks
            d["max_blocks"] = self.max_blocks
        if self.negligible:
            d["negligible"] = self.negligible
        if self.negligible_threshold:
            d["negligible_threshold"] = self.negligible_threshold
            d["max_negligible"] = self.max_negligible
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BlockRule":
        if not isinstance(d, dict):
            raise TypeError(f"rule: expected a dict of rule options, got {type(d).__name__}")
        known = {"topk", "top_p", "min_blocks", "max_blocks", "negligible", "negligible_threshold", "max_negligible"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"rule: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls.make(**d)


RULE_OPTIONS = ("topk", "top_p", "min_blocks", "max_blocks", "negligible", "negligible_threshold", "max_negligible")


_RULE_DEFAULTS = dict(
    topk=None, top_p=None, min_blocks=1, max_blocks=None, negligible=0.0, negligible_threshold=0.0, max_negligible=None
)


def _is_default(name: str, value: object) -> bool:
    default = _RULE_DEFAULTS[name]
    if default is None:
        return value is None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == default


def rule_of(rule: Optional[BlockRule], **options) -> BlockRule:
    """A layer constructor's rule: `rule` when given (then the other rule options must keep their defaults: a
    value given there would be ignored), else the rule that `options` (some of RULE_OPTIONS) make."""
    if rule is None:
        return BlockRule.make(**options)
    given = sorted(k for k, v in options.items() if not _is_default(k, v))
    if given:
        raise ValueError(f"rule: expected either rule= or the rule options {given}, not both (a BlockRule holds them)")
    if not isinstance(rule, BlockRule):
        raise TypeError(f"rule: expected an sla.BlockRule, got {type(rule).__name__}")
    return rule


def updated_rule(current: Optional[BlockRule], options: dict) -> Optional[BlockRule]:
    """The rule of a layer after setting some of its options: `options` may hold ``rule`` (a whole BlockRule) or
    some of RULE_OPTIONS, which update `current` (a layer's rule; None: the defaults). Giving ``topk`` switches to
    the topk rule (top_p and its min/max_blocks are dropped) and giving ``top_p`` to the top_p rule. Returns None
    when `options` has none of them; raises, changing nothing, when the result is not a valid rule."""
    given = {k: options[k] for k in RULE_OPTIONS if k in options}
    if "rule" in options:
        rule = options["rule"]
        if given:
            raise ValueError(
                f"rule: expected either rule= or the rule options {sorted(given)}, not both (a BlockRule holds them)"
            )
        if not isinstance(rule, BlockRule):
            raise TypeError(f"rule: expected an sla.BlockRule, got {type(rule).__name__}")
        return rule
    if not given:
        return None
    fields = {k: getattr(current, k) for k in RULE_OPTIONS} if current is not None else {}
    if given.get("topk") is not None and "top_p" not in given:
        fields.update(top_p=None, min_blocks=1, max_blocks=None)
    if given.get("top_p") is not None and "topk" not in given:
        fields["topk"] = None
    fields.update(given)
    return BlockRule.make(**fields)


def capacities(rule: BlockRule, heads: int, k_blocks: int, variant: str) -> tuple[int, int]:
    """(T, Tn): the widths of the LUT and of the negligible table, as the library computes them
    (sla::block_map_shape); used by the fake kernels."""
    args = rule.op_args()
    return table_widths(k_blocks, variant, **args)


def table_widths(
    k_blocks: int,
    variant: str,
    *,
    topk: float,
    negligible: float,
    head_topk=(),
    top_p: float = 0.0,
    head_top_p=(),
    min_blocks: int = 1,
    max_blocks: int = 0,
    negligible_threshold: float = 0.0,
    max_negligible: float = 0.0,
) -> tuple[int, int]:
    nk = k_blocks
    if top_p != 0.0 or len(head_top_p) > 0:
        t = nk if max_blocks == 0 else min(max_blocks, nk)
    else:
        tk = max(head_topk) if len(head_topk) > 0 else topk
        t = min(max(math.floor(tk * nk), 1), nk)
    tn = 0
    if variant == "complement":
        frac = max_negligible if negligible_threshold > 0 else negligible
        if frac > 0:
            tn = max(min(math.floor(frac * nk), nk - t), 0)
    return t, tn


__all__ = ["RULE_OPTIONS", "BlockRule", "rule_of", "updated_rule"]
