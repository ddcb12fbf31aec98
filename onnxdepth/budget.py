"""`prune --max-drop D`: prune as far as possible while the held-out fidelity stays within D.

One selection runs at the upper ratio (`--ratio`, default `DEFAULT_UPPER`; the largest reachable reduction
when that is out of reach). Its steps are an order of removal: the model after the first k steps is
`replay_plan` of that prefix, with its own refits (the compensation of the plan is fitted again for the
prefix) and its own fidelity line. A bisection over k finds the longest prefix whose fidelity drop
(1 - headline: top-1 disagreement, mAP50 loss, ...) is at most D, assuming the drop grows with k; every
probe is recorded. A selection whose choice depends on the ratio (Gromov's contiguous run, the fitted run;
`strategies.prefix_stable`) is not replayed: each probe is a selection of its own at the prefix's
reduction, and `selection_runs` counts them. The held-out windows are the fidelity line's, so the reported drop is the one the
bisection compared with D: a ratio chosen on these windows, not a fresh test.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import onnx

from .config import PruneConfig
from .errors import InvalidArgumentError, RatioUnreachableError

__all__ = ["DEFAULT_UPPER", "prune_within_drop"]

logger = logging.getLogger(__name__)

#: The upper ratio of the search when --ratio is not given.
DEFAULT_UPPER = 0.5


def _drop(result, where: str) -> float:
    fidelity = result.plan.get("fidelity") or {}
    if fidelity.get("drop") is None:
        raise InvalidArgumentError(f"--max-drop: no held-out fidelity for {where} "
                                   f"({fidelity.get('reason', 'the fidelity check was skipped')})")
    return float(fidelity["drop"])


def _upper_selection(model: onnx.ModelProto, config: PruneConfig, scores, on_step) -> tuple[object, int]:
    """The selection at CONFIG's ratio, or at the largest reachable one; (result, selection runs)."""
    from .api import prune_model

    try:
        return prune_model(model, config, scores=scores, on_step=on_step), 1
    except RatioUnreachableError as exc:
        if exc.reachable <= 0:
            raise
        logger.warning("--max-drop: ratio %.3g is out of reach; searching up to %.4f", config.ratio, exc.reachable)
        reachable = dataclasses.replace(config, ratio=exc.reachable)
        return prune_model(model, reachable, scores=scores, on_step=on_step), 2


def prune_within_drop(model: onnx.ModelProto, config: PruneConfig, *, max_drop: float, scores=None,
                      on_step: Callable | None = None, on_probe: Callable[[dict], None] | None = None):
    """The PruneResult of the longest prefix of CONFIG's selection whose fidelity drop is at most MAX_DROP;
    its plan's `budget` records the search (ON_PROBE(probe) sees each probe as it is measured)."""
    from .api import prune_model, record_plan, replay_plan

    if not 0.0 <= max_drop < 1.0:
        raise InvalidArgumentError(f"--max-drop {max_drop:g}: must be in [0, 1)")
    if not config.fidelity:
        raise InvalidArgumentError("--max-drop needs the fidelity check")
    reductions: list[float] = []  # reductions[k - 1]: the parameter reduction after the selection's k-th step

    def step(plan, reduction: float) -> None:
        reductions.append(reduction)
        if on_step is not None:
            on_step(plan, reduction)

    full, selection_runs = _upper_selection(model, config, scores, step)
    steps = full.plan["steps"]
    reductions = reductions[-len(steps):] if steps else []  # a retried selection reported its steps twice
    probes = []
    from .strategies import prefix_stable

    stable = prefix_stable(full.plan.get("selection"))

    def candidate(k: int):
        """The model after K steps: the prefix replayed, or (a ratio-dependent choice such as Gromov's
        contiguous run) a selection of its own at the prefix's reduction."""
        nonlocal selection_runs
        if stable:
            return replay_plan(model, {**full.plan, "steps": steps[:k]}, input_shapes=config.input_shapes,
                               verify=config.verify, fidelity=config.calibration)
        selection_runs += 1
        return prune_model(model, dataclasses.replace(config, ratio=reductions[k - 1]), scores=scores)

    def record(k: int, result) -> bool:
        probe = {"steps": k, "ratio": round(result.reduction, 6), "drop": _drop(result, f"{k} steps")}
        probes.append(probe)
        if on_probe is not None:
            on_probe(probe)
        return probe["drop"] <= max_drop

    best, lo, hi = full, len(steps), len(steps)
    if not record(len(steps), full):
        # Invariant: the prefix of LO steps is within the budget (0 steps: the unpruned model), HI's is not.
        lo, best = 0, None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            result = candidate(mid)
            if record(mid, result):
                lo, best = mid, result
            else:
                hi = mid
    if best is None:
        first = next(p for p in probes if p["steps"] == 1) if any(p["steps"] == 1 for p in probes) else probes[-1]
        raise RatioUnreachableError(f"--max-drop {max_drop:g}: no prune stays within it (removing "
                                    f"{first['steps']} unit(s), {first['ratio']:.2%} of the parameters, already "
                                    f"drops {first['drop']:.4f})", reachable=0.0)
    plan = {key: value for key, value in best.plan.items() if key != "replayed"}
    plan["budget"] = {"max_drop": max_drop, "upper_ratio": round(full.reduction, 6), "steps": lo,
                           "chosen_ratio": round(best.reduction, 6), "drop": _drop(best, "the choice"),
                           "selection_runs": selection_runs, "probes": probes}
    record_plan(best, plan)
    return best
