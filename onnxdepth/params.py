"""Parameter counting as in the thesis: every floating-point constant tensor, each counted once."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

__all__ = ["count_params", "count_params_proto"]


def _is_param(values: np.ndarray) -> bool:
    # Scalars (epsilons, 0.5 in GELU, 6 in HardSwish) are arithmetic constants, not parameters.
    return values.ndim >= 1 and np.issubdtype(values.dtype, np.floating)


def count_params(graph: gs.Graph) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
            seen.add(id(tensor))
            shape = tensor.shape
            dtype = tensor.dtype
            if shape is not None and len(shape) >= 1 and np.issubdtype(np.dtype(dtype), np.floating):
                total += int(np.prod(shape))
    for node in graph.nodes:
        if node.op == "Constant" and node.outputs and node.outputs[0].outputs:
            value = node.attrs.get("value")
            if isinstance(value, gs.Constant) and _is_param(np.asarray(value.values)):
                total += int(np.prod(value.shape))
    return total


def count_params_proto(model: onnx.ModelProto) -> int:
    return count_params(gs.import_onnx(model))
