"""Reading constant values behind graph-surgeon tensors (initializers, Constant nodes, Identity chains)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .external import ExternalValues

__all__ = ["const_value", "constant_array", "is_const", "set_const_input"]


def constant_array(const: gs.Constant) -> np.ndarray:
    """CONST's values; an external tensor's as a fresh memory map each time (graph-surgeon's `values` would keep
    the array in the constant, and the export would then copy it into the proto)."""
    values = const._values
    if isinstance(values, ExternalValues):
        return values.load()
    return np.asarray(const.values)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The numpy value of TENSOR if it is constant (initializer, Constant node, Identity of one)."""
    seen = 0
    while tensor is not None and seen < 8:
        if isinstance(tensor, gs.Constant):
            return constant_array(tensor)
        if len(tensor.inputs) != 1:
            return None
        producer = tensor.inputs[0]
        if producer.op == "Constant":
            value = producer.attrs.get("value")
            if isinstance(value, gs.Constant):
                return np.asarray(value.values)
            for key in ("value_float", "value_int"):
                if key in producer.attrs:
                    return np.asarray(producer.attrs[key])
            for key in ("value_floats", "value_ints"):
                if key in producer.attrs:
                    return np.asarray(producer.attrs[key])
            return None
        if producer.op == "Identity":
            tensor = producer.inputs[0]
            seen += 1
            continue
        if producer.op == "Transpose":
            # A tied weight used transposed (an LM head reading the embedding table): a view, no copy.
            value = const_value(producer.inputs[0])
            if value is None:
                return None
            perm = producer.attrs.get("perm")
            return np.transpose(value, perm) if perm is not None else value.T
        return None
    return None


def is_const(tensor: gs.Tensor | None) -> bool:
    return const_value(tensor) is not None


def set_const_input(node: gs.Node, index: int, value: np.ndarray, hint: str = "") -> gs.Constant:
    """Replace NODE's input INDEX with a fresh constant (never mutates a possibly shared one).

    The name derives from the node (unique per graph) and the input index, so runs are reproducible.
    """
    const = gs.Constant(f"{node.name}__in{index}", np.ascontiguousarray(value))
    node.inputs[index] = const
    return const
