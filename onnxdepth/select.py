"""Selection algorithms over plans and scores: Algorithm 9 (iterative, lowest importance first, re-planned
after each prune), Algorithm 8's interleaved rankings, one-shot pruning in a given order, Gromov's runs."""

from __future__ import annotations

import logging
import random
from typing import Callable

from .errors import InvalidArgumentError, RatioUnreachableError
from .prune.session import PruneSession, UnitPlan

__all__ = ["algorithm8_order", "apply_unit", "gromov_order", "prune_one_shot", "prune_to_ratio", "prune_transformer"]

logger = logging.getLogger(__name__)


def _reached(objective, session: PruneSession, reduction: float, ratio: float) -> bool:
    """True once the selection's target is met: the parameter RATIO, or OBJECTIVE's (a latency share)."""
    return reduction >= ratio if objective is None else objective.reached(session, reduction, ratio)


def _unreachable(objective, session: PruneSession, ratio: float, reduction: float, steps: int) -> RatioUnreachableError:
    if objective is not None and objective.latency_ratio is not None:
        return RatioUnreachableError(objective.unreachable(session, steps), reachable=reduction)
    return RatioUnreachableError(f"ratio {ratio:g} is not reachable: the largest reachable reduction is "
                                 f"{reduction:.4f} ({steps} units pruned, nothing prunable left)", reachable=reduction)


def prune_to_ratio(session: PruneSession, ratio: float, *, ordering: str = "ascending", seed: int = 0,
                   on_step: Callable[[UnitPlan, float], None] | None = None,
                   refresh: Callable[[PruneSession], None] | None = None, objective=None,
                   unit_scores: dict[str, float] | None = None) -> list[UnitPlan]:
    """Algorithm 9: while the parameter reduction is below RATIO, prune the lowest-scoring unit.

    Every unit is re-planned (channels to drop, cost, score) on the current graph after each prune.
    ORDERING descending / random picks the highest-scoring / a random unit instead (line 7 of the
    algorithm, the thesis's Table 4.5 ablation). OBJECTIVE (`onnxdepth.latency.Objective`): rank by its
    score (per ms saved) and stop at its target instead. UNIT_SCORES (measured per unit, e.g. angular on the
    graph outputs) replace the plans' per-parameter scores; a unit without one ranks after every unit with
    one. Raises RatioUnreachableError with the largest
    reduction reached when no prunable unit is left.
    """
    rng = random.Random(seed)
    steps: list[UnitPlan] = []
    total = session.params_before
    reduction = 0.0
    while not _reached(objective, session, reduction, ratio):
        if refresh is not None:
            refresh(session)  # line 5: importance re-estimated on the current graph (Taylor)
        plans = session.prunable_plans()
        if not plans:
            raise _unreachable(objective, session, ratio, reduction, len(steps))
        if unit_scores is not None:
            for plan in plans:
                plan.score = unit_scores.get(plan.unit_id, float("inf"))
        if objective is None:
            rank = lambda p: (p.score, p.unit_id)  # noqa: E731
        else:
            rank = lambda p: (objective.rank_score(session, p), p.unit_id)  # noqa: E731
        if ordering == "descending":
            best = max(plans, key=rank)
        elif ordering == "random":
            best = rng.choice(sorted(plans, key=lambda p: p.unit_id))
        else:
            best = min(plans, key=rank)
        session.apply(best)
        steps.append(best)
        reduction = 1.0 - session.params() / total
        logger.info("pruned %s (%d params), reduction %.4f", best.unit_id, best.params_removed, reduction)
        if on_step is not None:
            on_step(best, reduction)
    return steps



def _ordered(plans: list, ordering: str, seed: int) -> list:
    if ordering == "ascending":
        return sorted(plans, key=lambda p: (p.score, p.unit_id))
    if ordering == "descending":
        return sorted(plans, key=lambda p: (-p.score, p.unit_id))
    rng = random.Random(seed)
    shuffled = sorted(plans, key=lambda p: p.unit_id)
    rng.shuffle(shuffled)
    return shuffled


def algorithm8_order(plans: list, ordering: str = "ascending", seed: int = 0) -> list[str]:
    """Algorithm 8's visiting order: separate attention / non-attention rankings, interleaved so that
    position k takes an attention unit when k mod 3 == 1 (two non-attention units per attention unit).
    When one ranking runs out the other continues alone."""
    attention = [p.unit_id for p in _ordered([p for p in plans if p.unit_id.endswith(".attention")], ordering, seed)]
    others = [p.unit_id for p in _ordered([p for p in plans if not p.unit_id.endswith(".attention")], ordering,
                                          seed + 1)]
    order: list[str] = []
    k = 0
    while attention or others:
        take_attention = (k % 3 == 1 and attention) or not others
        order.append((attention if take_attention else others).pop(0))
        k += 1
    return order


def apply_unit(session: PruneSession, unit_id: str, steps: list, on_step: Callable | None = None) -> bool:
    """Plan and prune UNIT_ID, appending its plan to STEPS; False (and logged) if it cannot be pruned now."""
    plan = session.plan(unit_id)
    if plan.reason is not None:
        logger.info("skipping %s: %s", unit_id, plan.reason)
        return False
    session.apply(plan)
    steps.append(plan)
    if on_step is not None:
        on_step(plan, 1.0 - session.params() / session.params_before)
    return True


def prune_one_shot(session: PruneSession, ratio: float, order: list[str], *,
                   on_step: Callable | None = None, objective=None) -> list:
    """Prune units in the given ORDER (scores computed once, as the thesis does for LLMs) until the
    parameter reduction reaches RATIO (or OBJECTIVE's target). Units that became unprunable meanwhile are
    skipped."""
    steps = []
    total = session.params_before
    reduction = 0.0
    for unit_id in order:
        if _reached(objective, session, reduction, ratio):
            break
        if apply_unit(session, unit_id, steps, on_step):
            reduction = 1.0 - session.params() / total
    if not _reached(objective, session, reduction, ratio):
        raise _unreachable(objective, session, ratio, reduction, len(steps))
    return steps


def gromov_order(layer_distances: list[float], n_layers: int) -> list[str]:
    """Gromov et al.: the contiguous run of N_LAYERS layers whose input and output are closest.

    LAYER_DISTANCES[l][n] is the angular distance between the input of layer l and the output of layer
    l + n - 1 (so a run of n layers starting at l); returns the block unit ids of the best run.
    """
    best = min(range(len(layer_distances) - n_layers + 1), key=lambda l: (layer_distances[l][n_layers], l))
    return [f"layer{best + k}.block" for k in range(n_layers)]


def prune_transformer(session: PruneSession, ratio: float, *, ordering: str = "ascending", seed: int = 0,
                      scores: dict[str, float] | None = None, ranking: str = "split",
                      on_step: Callable | None = None, objective=None) -> list:
    """Algorithm 8 for --granularity fine, one plain ranking for sublayer/block.

    SCORES (unit id -> importance, e.g. angular distance) replace the plans' own (magnitude) scores.
    OBJECTIVE (`onnxdepth.latency.Objective`): every ranking is by its score (per ms saved), and the
    selection stops at its target.
    """
    plans = session.prunable_plans()
    if scores is not None:
        missing = [p.unit_id for p in plans if p.unit_id not in scores]  # extra rows (run distances) are fine
        if missing:
            raise InvalidArgumentError(f"the score table has no score for {len(missing)} units (e.g. {missing[0]})")
        for plan in plans:
            plan.score = float(scores[plan.unit_id])
    if objective is not None:
        for plan in plans:  # scored on the unpruned graph, like the importance itself
            plan.score = objective.rank_score(session, plan)
    if ranking == "global" and (objective is None or not objective.by_latency):
        # One shared ranking (past the thesis's limitation 2): importance per parameter removed, so that a
        # small attention block and a large MLP projection compete on what each costs per parameter.
        for plan in plans:
            plan.score = plan.score / max(plan.params_removed, 1)
        order = [p.unit_id for p in _ordered(plans, ordering, seed)]
    elif session.granularity == "fine":
        order = algorithm8_order(plans, ordering, seed)
    else:
        order = [p.unit_id for p in _ordered(plans, ordering, seed)]
    return prune_one_shot(session, ratio, order, on_step=on_step, objective=objective)
