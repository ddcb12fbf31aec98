"""Per-parameter importance: the type every metric implements, and the data-free default (magnitude).

It sits outside both `onnxdepth.importance` and `onnxdepth.prune`, so that a pruning session can default
to magnitude while importance metrics build pruning sessions, without either package importing the other.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["ParamImportance", "magnitude"]

# Per-parameter importance: maps a constant's values to a same-shape array of non-negative scores.
ParamImportance = Callable[[gs.Node, int, np.ndarray], np.ndarray]


def magnitude(node: gs.Node, index: int, values: np.ndarray) -> np.ndarray:
    """Data-free weight magnitude |w| (L1), in the place of Taylor's (dE/dw * w)^2."""
    return np.abs(values.astype(np.float64))
