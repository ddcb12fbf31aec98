"""The latency objective of a selection: rank units by damage per millisecond saved, stop at a latency target.

`--objective latency` ranks each prunable unit by its importance score divided by the kernel milliseconds
its Prune(f) saves (`UnitCosts.saving_ms`) instead of by the score alone (the parameter objective).
`--latency-ratio R` stops the selection once R of the profiled kernel time is gone on the profile's
accounting (`UnitCosts.reduction`), as `--ratio` stops it once R of the parameters are; it works with either
objective. The selection functions in `onnxdepth.select` take an `Objective` (None: the parameter objective
with a `--ratio` target, exactly as before).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from ..errors import InvalidArgumentError
from .profile import profile_model
from .unit_costs import UnitCosts

__all__ = ["LATENCY_STRATEGIES", "MIN_SAVING_MS", "Objective", "objective_for"]

logger = logging.getLogger(__name__)

#: The selection strategies that take an objective (Algorithm 9 on CNNs, one ranking on transformers).
LATENCY_STRATEGIES = ("iterative", "ranked", "rescore")
#: A unit that saves less than this many ms is ranked as if it saved this much (no division by zero).
MIN_SAVING_MS = 1e-6


@dataclass
class Objective:
    """What a selection ranks by and when it stops, on one session's latency accounting."""

    costs: UnitCosts
    by_latency: bool  # rank by score per ms saved (else by score, the parameter objective)
    latency_ratio: float | None  # stop at this share of the profiled kernel time (else at --ratio)

    def rank_score(self, session, plan) -> float:
        """PLAN's ranking value: its score per millisecond saved, or its score."""
        if not self.by_latency:
            return plan.score
        return plan.score / max(self.costs.saving_ms(session, plan), MIN_SAVING_MS)

    def reached(self, session, param_reduction: float, ratio: float) -> bool:
        """True once the target is met: the latency share when one is set, else the parameter RATIO."""
        if self.latency_ratio is None:
            return param_reduction >= ratio
        return self.costs.reduction(session) >= self.latency_ratio

    def unreachable(self, session, steps: int) -> str:
        """The message of a latency target that the prunable units cannot reach."""
        return (f"latency ratio {self.latency_ratio:g} is not reachable: the largest reachable latency reduction "
                f"is {self.costs.reduction(session):.4f} ({steps} units pruned, nothing prunable left)")

    def record(self, session) -> dict:
        """The plan's `latency` record: the objective, the target, the profile and the reduction reached."""
        after = self.costs.current_ms(session)
        return {"objective": "latency" if self.by_latency else "params", "latency_ratio": self.latency_ratio,
                "profile": self.costs.profile.summary(), "ms_before": round(self.costs.total_ms, 4),
                "ms_after": round(after, 4), "reduction": round(self.costs.reduction(session), 6),
                "accounting": "profiled kernel ms of the nodes left (weights scaled by the share left)"}


def objective_for(model: onnx.ModelProto, session, config, strategy_name: str) -> Objective | None:
    """The objective CONFIG asks for on SESSION (profiling MODEL, cached beside its file), or None when it
    asks for the parameter objective with a --ratio target (nothing is profiled then)."""
    if config.objective == "params" and config.latency_ratio is None:
        return None
    # Re-scoring takes the objective on CNNs (measured output damage), not on transformers' block-local moves.
    if strategy_name not in LATENCY_STRATEGIES or (strategy_name == "rescore" and session.layers):
        raise InvalidArgumentError(f"--objective latency / --latency-ratio: not supported with the {strategy_name} "
                                   f"selection (works with {', '.join(LATENCY_STRATEGIES)})")
    if config.input_shapes is None and _has_symbolic_dims(model):
        logger.warning("latency profile on input shapes %s (symbolic dims filled in): pass --input-shape for the "
                       "deployment's", session.input_shapes)
    profile = profile_model(model, input_shapes=session.input_shapes, device=config.device,
                            threads=config.profile_threads, runs=config.profile_runs,
                            model_path=config.calibration.model_path)
    how = f"reused from {profile.cache}" if profile.reused else "measured now"
    logger.warning("latency profile (%s): ORT %s kernel times on %d thread(s) (--profile-threads), median of %d runs, "
                   "%.2f ms per run", how, config.device, config.profile_threads, config.profile_runs,
                   profile.total_ms)
    return Objective(UnitCosts(profile, session), config.objective == "latency", config.latency_ratio)


def _has_symbolic_dims(model: onnx.ModelProto) -> bool:
    initializers = {t.name for t in model.graph.initializer}
    return any(not d.HasField("dim_value") for v in model.graph.input if v.name not in initializers
               for d in v.type.tensor_type.shape.dim)
