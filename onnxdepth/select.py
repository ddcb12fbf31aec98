"""Selection: Algorithm 9 (iterative, lowest importance first, re-scored after each prune)."""

from __future__ import annotations

import logging
from typing import Callable

from .errors import RatioUnreachableError
from .prune.session import PruneSession, UnitPlan

__all__ = ["prune_to_ratio"]

logger = logging.getLogger(__name__)


def prune_to_ratio(session: PruneSession, ratio: float, *, on_step: Callable[[UnitPlan, float], None] | None = None
                   ) -> list[UnitPlan]:
    """Algorithm 9: while the parameter reduction is below RATIO, prune the lowest-scoring unit.

    Every unit is re-planned (channels to drop, cost, score) on the current graph after each prune.
    Raises RatioUnreachableError with the largest reduction reached when no prunable unit is left.
    """
    steps: list[UnitPlan] = []
    total = session.params_before
    reduction = 0.0
    while reduction < ratio:
        plans = session.prunable_plans()
        if not plans:
            raise RatioUnreachableError(
                f"ratio {ratio:g} is not reachable: the largest reachable reduction is {reduction:.4f}"
                f" ({len(steps)} units pruned, nothing prunable left)", reachable=reduction)
        best = min(plans, key=lambda p: (p.score, p.unit_id))
        session.apply(best)
        steps.append(best)
        reduction = 1.0 - session.params() / total
        logger.info("pruned %s (%d params), reduction %.4f", best.unit_id, best.params_removed, reduction)
        if on_step is not None:
            on_step(best, reduction)
    return steps
