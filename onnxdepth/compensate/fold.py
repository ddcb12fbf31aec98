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

__all__ = ["affine_of", "fold_output_map", "set_affine", "set_norm_affine"]


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


def affine_of(node: gs.Node, output: gs.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(W [in, out], b [out] or None) with OUTPUT = x W + b, of NODE (MatMul [+ bias Add] or Gemm), in float64."""
    weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op not in ("MatMul", "Gemm") or weight is None or weight.ndim != 2:
        raise UnsupportedModelError(f"{node.name}: not a {node.op} with a constant 2-D weight")
    weight = weight.astype(np.float64)
    bias = None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            raise UnsupportedModelError(f"{node.name}: Gemm with transA")
        weight = float(node.attrs.get("alpha", 1.0)) * (weight.T if node.attrs.get("transB", 0) else weight)
        c = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if c is not None:
            # C broadcasts over rows: a [out] or [1, out] bias, scaled by beta.
            bias = float(node.attrs.get("beta", 1.0)) * np.broadcast_to(c, (weight.shape[1],)).astype(np.float64)
    add = _bias_add(node, output)
    if add is not None:
        index = 1 if add.inputs[0] is node.outputs[0] else 0
        term = np.broadcast_to(const_value(add.inputs[index]), (weight.shape[1],)).astype(np.float64)
        bias = term if bias is None else bias + term
    return weight, bias


def set_affine(node: gs.Node, output: gs.Tensor, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Make NODE compute OUTPUT = x WEIGHT [in, out] + BIAS [out] (BIAS None: leave no bias where there is none).

    The bias goes where the node keeps it: Gemm's C (over beta) or the bias Add; with both, C takes all of
    it and the Add's term is zeroed. Every edited tensor is a fresh constant."""
    old = const_value(node.inputs[1])
    if node.op == "Gemm":
        scaled = weight / float(node.attrs.get("alpha", 1.0))
        set_const_input(node, 1, (scaled.T if node.attrs.get("transB", 0) else scaled).astype(old.dtype))
    else:
        set_const_input(node, 1, weight.astype(old.dtype))
    if bias is None:
        return
    add = _bias_add(node, output)
    if node.op == "Gemm" and len(node.inputs) > 2 and const_value(node.inputs[2]) is not None:
        c = const_value(node.inputs[2])
        shape = c.shape if c.size == bias.size else bias.shape  # a scalar C becomes a per-channel one
        set_const_input(node, 2, (bias / float(node.attrs.get("beta", 1.0))).reshape(shape).astype(c.dtype))
        bias = np.zeros_like(bias)  # the Add (if any) now adds nothing more
    if add is not None:
        index = 1 if add.inputs[0] is node.outputs[0] else 0
        term = const_value(add.inputs[index])
        shape = term.shape if term.size == bias.size else bias.shape  # a scalar term becomes per-channel
        set_const_input(add, index, bias.reshape(shape).astype(term.dtype))


def set_norm_affine(node: gs.Node, scale: np.ndarray, bias: np.ndarray) -> None:
    """Give a LayerNormalization NODE the per-channel SCALE and BIAS [channels] (fresh constants)."""
    old = const_value(node.inputs[1])
    set_const_input(node, 1, scale.reshape(old.shape).astype(old.dtype))
    if len(node.inputs) > 2 and const_value(node.inputs[2]) is not None:
        set_const_input(node, 2, bias.reshape(const_value(node.inputs[2]).shape).astype(old.dtype))
    else:
        node.inputs.append(gs.Constant(f"{node.name}__in2", np.ascontiguousarray(bias.astype(old.dtype))))
