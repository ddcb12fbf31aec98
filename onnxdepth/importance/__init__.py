"""Importance metrics: per-parameter scores, summed into unit and channel scores (Eq. 3.8-3.10)."""

from __future__ import annotations

from typing import Callable

from ..errors import InvalidArgumentError
from ..param_importance import magnitude

__all__ = ["METRICS", "get_metric", "magnitude"]

METRICS: dict[str, Callable] = {"magnitude": magnitude}
# Unit-level metrics measured on calibration data (they score whole units, not parameters).
UNIT_METRICS = ("angular", "cross_entropy")
# Per-parameter metrics computed from data by a sidecar (set up by the API, not a plain function).
SIDECAR_METRICS = ("taylor",)
# Metrics not implemented yet; named here so the CLI can say so.
PLANNED: tuple[str, ...] = ()


def get_metric(name: str) -> Callable:
    """The per-parameter metric behind NAME (unit-level metrics use magnitude for channel choices)."""
    if name in METRICS:
        return METRICS[name]
    if name in UNIT_METRICS or name in SIDECAR_METRICS:
        return magnitude
    available = ", ".join([*METRICS, *UNIT_METRICS, *SIDECAR_METRICS])
    if name in PLANNED:
        raise InvalidArgumentError(f"--importance {name}: not yet supported (available: {available})")
    raise InvalidArgumentError(f"--importance {name}: unknown metric (available: {available})")
