"""Importance metrics: per-parameter scores, summed into unit and channel scores (Eq. 3.8-3.10)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import InvalidArgumentError

__all__ = ["METRICS", "get_metric", "magnitude"]


def magnitude(node: gs.Node, index: int, values: np.ndarray) -> np.ndarray:
    """Data-free weight magnitude |w| (L1), in the place of Taylor's (dE/dw * w)^2."""
    return np.abs(values.astype(np.float64))


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
