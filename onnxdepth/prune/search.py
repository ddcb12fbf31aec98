"""Bounded graph searches (Algorithms 3-4) and FindAct / FindNorm (Algorithms 1-2) over lifted ops.

Both searches walk tensors with the shared `walk` (graph/walk.py) and collect the lifted ops they meet.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..graph.lift import Lifted, Lifting, NodeClass
from ..graph.walk import walk

__all__ = ["forward_bounded", "backward_bounded", "find_coupled_ops"]

_BOUNDARY = {NodeClass.TRANSFORM, NodeClass.ARITHMETIC, NodeClass.CONCAT}


def forward_bounded(start: gs.Tensor, lifting: Lifting, graph_outputs: set) -> tuple[list[Lifted], bool]:
    """Lifted ops reached forward from START, stopping at (and including) transforms and T/M nodes.

    Returns the ops and whether a graph output was reached without crossing a boundary.
    """
    seen: dict[int, Lifted] = {}

    def next_tensors(tensor: gs.Tensor) -> list[gs.Tensor]:
        following: list[gs.Tensor] = []
        for consumer in tensor.outputs:
            if consumer.op in ("Shape", "Size"):
                continue  # carries the tensor's shape, not its data
            op = lifting.of_node.get(id(consumer))
            if op is None or id(op) in seen:
                continue
            seen[id(op)] = op
            if op.cls not in _BOUNDARY:
                following.extend(op.head.outputs if op.output is None else [op.output])
        return following

    reached_output = False
    for tensor in walk([start], next_tensors):
        reached_output = reached_output or id(tensor) in graph_outputs
    return list(seen.values()), reached_output


def backward_bounded(op: Lifted, lifting: Lifting) -> list[Lifted]:
    """Lifted ops reached backward from OP's inputs, stopping at (and including) T/M nodes."""
    seen: dict[int, Lifted] = {}

    def next_tensors(tensor: gs.Tensor) -> list[gs.Tensor]:
        if not tensor.inputs:
            return []  # a graph input or a constant: nothing produced it
        producer = lifting.of_node.get(id(tensor.inputs[0]))
        if producer is None or id(producer) in seen:
            return []
        seen[id(producer)] = producer
        if producer.cls in _BOUNDARY:
            return []
        src = [producer.input] if producer.input is not None else producer.nodes[0].inputs
        return [t for t in src if t is not None and not isinstance(t, gs.Constant)]

    inputs = [op.input] if op.input is not None else list(op.nodes[0].inputs)
    for _ in walk([t for t in inputs if t is not None], next_tensors):
        pass  # NEXT_TENSORS records the ops as the walk reaches them
    return list(seen.values())


def _transforms(ops: list[Lifted]) -> set[int]:
    return {id(op.head) for op in ops if op.cls is NodeClass.TRANSFORM}


def find_coupled_ops(trigger: gs.Node, expected: set[int], lifting: Lifting, graph_outputs: set) -> list[Lifted]:
    """FindAct + FindNorm for TRIGGER with expected coupled transforms EXPECTED (ids of nodes).

    Activations after the trigger whose backward search meets exactly the expected transforms are
    coupled (Alg. 1). Norms before it whose forward search meets exactly them are coupled (Alg. 2).
    A norm right after the trigger (post-norm Conv-BN) is coupled the same way as an activation: it is
    an affine map that only exists for the trigger's output. For the same reason a norm found backwards
    is a pre-norm (Alg. 2) only if no transform feeds it directly: Conv1-BN1-ReLU-Conv2's BN1 is Conv1's.
    """
    coupled: list[Lifted] = []
    forward, _ = forward_bounded(trigger.outputs[0], lifting, graph_outputs)
    for op in forward:
        if op.cls in (NodeClass.ACTIVATION, NodeClass.NORM) and op.input is not None:
            if _transforms(backward_bounded(op, lifting)) == expected:
                coupled.append(op)
    trigger_op = lifting.of_node[id(trigger)]
    for op in backward_bounded(trigger_op, lifting):
        if op.cls is NodeClass.NORM and op.input is not None:
            if _transforms(backward_bounded(op, lifting)):
                continue  # a post-norm of an earlier transform (Conv-BN): it belongs to that layer
            ops, reaches_output = forward_bounded(op.output, lifting, graph_outputs)
            # A norm whose output also feeds a residual Add directly sits on the residual stream (post-LN
            # BERT's LayerNorm): it normalises the stream itself, not the input of one branch.
            on_residual = any(c.op in ("Add", "Sub") and lifting.of_node[id(c)].cls is NodeClass.ARITHMETIC
                              for c in op.output.outputs)
            if not reaches_output and not on_residual and _transforms(ops) == expected:
                coupled.append(op)
    return coupled
