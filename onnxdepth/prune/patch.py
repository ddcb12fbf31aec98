"""PatchIdentityArithmetic (Eq. 3.5-3.7): clean up the arithmetic that pruned identities leave behind.

x op id(x) reduces to x (Eq. 3.5), and a channel Concat that now holds the same source twice drops
the copy and width-prunes its successors to match (Eq. 3.6-3.7).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.channels import UNARY_PASSTHROUGH, ChannelAnalysis
from ..graph.consts import const_value, set_const_input
from ..graph.lift import transform_weight_index
from .apply import replace_with_identity

__all__ = ["PatchableSession", "patch", "resolve"]


class PatchableSession(Protocol):
    """What patching needs of a pruning session (ANALYSIS is recomputed after INVALIDATE)."""

    graph: gs.Graph
    identity_nodes: set[int]

    @property
    def analysis(self) -> ChannelAnalysis: ...

    def invalidate(self) -> None: ...


def resolve(tensor: gs.Tensor, identity_nodes: set[int]) -> tuple[gs.Tensor, bool]:
    """Follow pruned identities back to their source (Algorithm 6); True if any was crossed."""
    via = False
    while tensor.inputs and id(tensor.inputs[0]) in identity_nodes:
        tensor = tensor.inputs[0].inputs[0]
        via = True
    return tensor, via


def patch(session: PatchableSession) -> int:
    """Patch redundant arithmetic (x op id(x) -> x) and duplicate Concat inputs; return edits made."""
    graph, identities = session.graph, session.identity_nodes
    edits = 0
    changed = True
    while changed:
        changed = False
        graph.toposort()
        for node in list(graph.nodes):
            if not node.outputs:
                continue
            if node.op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2 and \
                    all(const_value(t) is None for t in node.inputs):
                (a, via_a), (b, via_b) = resolve(node.inputs[0], identities), resolve(node.inputs[1], identities)
                if a is b and (via_a or via_b):
                    # x + 0, x - 0, x * 1, x / 1: the op reduces to its surviving operand.
                    replace_with_identity(graph, identities, a, node.outputs[0], [node])
                    changed = True
            elif node.op == "Concat" and _patch_concat(session, node):
                changed = True
            if changed:
                edits += 1
                graph.cleanup()
                session.invalidate()
                break
    return edits


def _patch_concat(session: PatchableSession, node: gs.Node) -> bool:
    """Drop repeated copies of one source in a channel Concat and width-prune its successors (3.6-3.7)."""
    a = session.analysis
    out = a.axes.get(node.outputs[0].name)
    if out is None:
        return False
    resolved = [resolve(t, session.identity_nodes) for t in node.inputs]
    if not any(via for _, via in resolved):
        return False
    widths = [len(a.axes[t.name].classes) if t.name in a.axes else None for t in node.inputs]
    if None in widths or sum(widths) != out.size:
        return False  # not a channel concat
    keep_inputs, seen, keep_mask = [], set(), []
    for (src, _), tensor, width in zip(resolved, node.inputs, widths):
        duplicate = id(src) in seen
        seen.add(id(src))
        keep_mask.extend([not duplicate] * width)  # this input's WIDTH positions of the Concat's channel axis
        if not duplicate:
            keep_inputs.append(tensor)
    if len(keep_inputs) == len(node.inputs):
        return False
    edits = _successor_edits(session.graph, a, node.outputs[0], np.array(keep_mask))
    if edits is None:
        return False
    for consumer, index, axis, keep in edits:
        value = np.compress(keep, const_value(consumer.inputs[index]), axis=axis)  # keep AXIS where KEEP
        set_const_input(consumer, index, value, consumer.inputs[index].name or consumer.name)
    node.inputs.clear()
    node.inputs.extend(keep_inputs)
    return True


def _successor_edits(graph: gs.Graph, a: ChannelAnalysis, tensor: gs.Tensor, keep: np.ndarray) -> list | None:
    """Slices that remove positions ~KEEP of TENSOR's channel axis in every successor, or None.

    Not a `walk`: it keeps no visited set, and it gives up at the first successor that cannot take the
    slice (the whole patch is then impossible).
    """
    edits: list = []
    stack = [tensor]
    while stack:
        t = stack.pop()
        if id(t) in {id(o) for o in graph.outputs}:
            return None
        for consumer in t.outputs:
            sites = [s for s in a.sites if s.node is consumer and s.kind in ("weight_in", "param")]
            if transform_weight_index(consumer) is not None and consumer.inputs[0] is t:
                site = next((s for s in sites if s.kind == "weight_in"), None)
                if site is None:
                    return None
                edits.append((consumer, site.input_index, site.axis, keep))
            elif consumer.op in UNARY_PASSTHROUGH and consumer.op != "Resize" or consumer.op in (
                    "BatchNormalization", "InstanceNormalization") or (
                    consumer.op in ("Add", "Sub", "Mul", "Div")
                    and sum(const_value(i) is None for i in consumer.inputs) == 1):
                edits.extend((consumer, s.input_index, s.axis, keep) for s in sites if s.kind == "param")
                stack.append(consumer.outputs[0])
            else:
                return None
    return edits
