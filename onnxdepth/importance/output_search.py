"""CNN selection by measured output damage, re-measured as the model is pruned (`--rescore-every N` on CNNs).

Algorithm 9 ranks by scores estimated on the unpruned model (Taylor is re-estimated, but first-order). Here
each step's candidates are measured: Prune(f) of the candidate on a copy of the model as pruned so far,
its nearest surviving Convs refitted (`compensate.chain`, as the final refits will), and the standardised
angular distance of the graph outputs to the *unpruned* model's (`output_damage`). The added damage (that
distance minus the current model's) ranks the candidates, per millisecond saved under the latency
objective. Every N steps all candidates are measured again; with `--shortlist K` only the K best of the
last ranking are. Each chosen unit's nearest Convs are refitted on the pruned model as it goes, so later
measurements start from what the refits repair.
"""

from __future__ import annotations

import logging
from typing import Callable

import onnx

from ..runtime import progress as progress_bar
from .output_damage import OutputDistance

__all__ = ["prune_with_output_rescoring"]

logger = logging.getLogger(__name__)

#: An added damage below this ranks as this (no division by zero, refits may repair more than a unit costs).
MIN_DAMAGE = 1e-9


def _current_session(model: onnx.ModelProto, session):
    """A fresh session of SESSION's graph as pruned so far (so it can be forked per candidate), with the
    same head units, exclusions, search space and importance; and its model."""
    from ..prune.session import PruneSession

    current = session.to_model(model)
    fresh = PruneSession(current, input_shapes=session.input_shapes, importance=session.importance,
                         search_space=session.search_space, head=session.head)
    fresh.exclude = session.exclude
    fresh.head_units = set(session.head_units)
    fresh.invalidate()
    return current, fresh


def _measure(model: onnx.ModelProto, session, unit_ids: list[str], damage: OutputDistance, fit: tuple) -> dict[str, float]:
    """Unit id -> output distance to the unpruned model once that unit is pruned from SESSION (as pruned so
    far) and its nearest Convs are refitted toward the current model."""
    from ..compensate import chain

    current, fresh = _current_session(model, session)
    plans = {p.unit_id: p for p in fresh.prunable_plans()}
    measured = {}
    with progress_bar(len(unit_ids), "angular (outputs, re-measured)", len(unit_ids) > 4) as bar:
        for unit_id in unit_ids:
            bar.advance()
            if unit_id not in plans:
                continue
            copy = fresh.fork()
            copy.apply(copy.plan(unit_id))
            chain.fit_consumer_chains(current, copy, *fit, scope="nearest")
            measured[unit_id] = damage(copy.to_model(current))
    return measured


def prune_with_output_rescoring(model: onnx.ModelProto, session, ratio: float, calibration, *, every: int,
                                shortlist: int | None = None, objective=None,
                                on_step: Callable | None = None) -> list:
    """Prune SESSION (a CNN with one image input, from MODEL) until RATIO of its parameters (or OBJECTIVE's
    latency target) is gone, taking at each step the candidate whose measured added output damage is lowest
    (per ms saved under the latency objective); see the module docstring."""
    from ..compensate import chain
    from ..compensate.images import image_inputs
    from ..select import _reached, _unreachable

    images, checks = image_inputs(model, session, calibration, count=16, held_out=8)
    damage = OutputDistance(model, next(iter(session.input_shapes)), images + checks)
    fit = (images, checks)
    steps: list = []
    scores: dict[str, float] = {}
    base, reduction, since = 0.0, 0.0, every
    while not _reached(objective, session, reduction, ratio):
        plans = {p.unit_id: p for p in session.prunable_plans()}
        if not plans:
            raise _unreachable(objective, session, ratio, reduction, len(steps))
        ranked = sorted(plans, key=lambda u: (_rank(objective, session, plans[u], scores.get(u), base), u))
        if since >= every or not scores:
            chosen = ranked if shortlist is None or not scores else ranked[:shortlist]
            scores.update(_measure(model, session, chosen, damage, fit))
            since = 0
            ranked = sorted(plans, key=lambda u: (_rank(objective, session, plans[u], scores.get(u), base), u))
        best = plans[ranked[0]]
        session.apply(best)
        steps.append(best)
        since += 1
        chain.fit_consumer_chains(model, session, images, checks, scope="nearest")
        scores.pop(best.unit_id, None)
        base = damage(session.to_model(model))
        reduction = 1.0 - session.params() / session.params_before
        logger.info("pruned %s, reduction %.4f, output distance %.5f", best.unit_id, reduction, base)
        if on_step is not None:
            on_step(best, reduction)
    return steps


def _rank(objective, session, plan, measured: float | None, base: float) -> float:
    """A candidate's ranking value: its added damage (per ms saved under the latency objective); a candidate
    not measured yet ranks last."""
    if measured is None:
        return float("inf")
    plan.score = max(measured - base, MIN_DAMAGE)
    return plan.score if objective is None else objective.rank_score(session, plan)

