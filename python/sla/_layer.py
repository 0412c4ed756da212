"""What calibration needs of an SLA layer, whatever module runs it: sla.SparseLinearAttention, and the diffusers
processor sla.diffusers.SLAWanAttnProcessor (which must not be imported here: sla does not need diffusers).

sla.record installs a ``recorder`` on every RuleLayer of a model; sla.apply_rules checks each calibrated rule
against its layer (``check_rule``) for every layer before it sets any (``set_rule``), so that a refused file
changes nothing.
"""

from __future__ import annotations

from typing import Callable, Optional

from .rules import BlockRule


class RuleLayer:
    """Mixin of the modules whose block-selection rule can be recorded and calibrated."""

    # Called as recorder(layer, q, k, v) with the (B, H, L, D) inputs SLA sees; None: not recording.
    recorder: Optional[Callable] = None

    def check_rule(self, rule: BlockRule, name: str = "rule") -> None:
        """Raises (naming `name`) unless `rule` fits this layer; changes nothing."""
        raise NotImplementedError

    def set_rule(self, rule: BlockRule) -> None:
        """Replaces the block-selection rule (checked first: a refused rule leaves the layer as it was)."""
        raise NotImplementedError


__all__ = ["RuleLayer"]
