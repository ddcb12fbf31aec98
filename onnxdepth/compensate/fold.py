"""Fold a linear map into a transform's weights: output y -> y T, with no new node or parameter.

ONNX layouts: MatMul y = x W with W [in, out], so W <- W T; Gemm y = alpha A B' + beta C with
B' = B (transB 0, [in, out]: B <- B T) or B^T (transB 1, [out, in]: B <- T^T B), and C <- C T; a bias Add
after a MatMul, b <- b T. Every edited weight is a fresh constant, so an initializer shared with another
node is never changed under it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..graph.consts import const_value, set_const_input

__all__ = ["fold_output_map"]


def _bias_add(node: gs.Node, output: gs.Tensor) -> gs.Node | None:
    """The bias Add between NODE and OUTPUT (its only consumer adding a constant), if OUTPUT is past it."""
    if node.outputs[0] is output:
        return None
    add = node.outputs[0].outputs[0]
    if add.op != "Add" or add.outputs[0] is not output:
        raise UnsupportedModelError(f"{node.name}: its output {output.name} is not its bias Add's")
    return add


def fold_output_map(node: gs.Node, output: gs.Tensor, transform: np.ndarray) -> None:
    """Make NODE (MatMul or Gemm, constant weight) compute OUTPUT @ TRANSFORM [out, out'] instead of OUTPUT."""
    t = transform.astype(np.float64)
    weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op not in ("MatMul", "Gemm") or weight is None or weight.ndim != 2:
        raise UnsupportedModelError(f"{node.name}: cannot fold into a {node.op} without a constant 2-D weight")
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        new_weight = t.T @ weight.astype(np.float64)  # B is [out, in]: (x B^T) T = x (T^T B)^T
    else:
        new_weight = weight.astype(np.float64) @ t  # [in, out] @ [out, out']
    set_const_input(node, 1, new_weight.astype(weight.dtype))
    if node.op == "Gemm" and len(node.inputs) > 2 and const_value(node.inputs[2]) is not None:
        bias = const_value(node.inputs[2])
        # C broadcasts over rows: fold its last axis (a [out] or [1, out] bias).
        set_const_input(node, 2, (bias.astype(np.float64) @ t).astype(bias.dtype))
    add = _bias_add(node, output)
    if add is not None:
        index = 1 if add.inputs[0] is node.outputs[0] else 0
        bias = const_value(add.inputs[index])
        set_const_input(add, index, (bias.astype(np.float64) @ t).astype(bias.dtype))
