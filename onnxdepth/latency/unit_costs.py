"""Per-unit milliseconds: what pruning a unit saves of a profile's kernel time, on the graph as it is now.

The accounting (`UnitCosts.current_ms`): every node still in the session's graph costs its profiled time,
scaled by how much of its constants is left (a Conv whose input or output channels were width-pruned
costs in proportion to its weight's elements, as its multiply-adds do); nodes Prune(f) removed cost
nothing; the kernels ORT added (layout reorders, `Profile.unattributed_ms`) stay. Ops without constants
are not scaled when a neighbour narrows their tensors, so the accounting under-counts savings, never
over-counts them.

A unit's saving (`saving_ms`) is read off its plan before it is applied: the trigger and every node
Prune(f) removes with it (bias Add, coupled activations and norms, an attention region), plus the
weight share of every node its width reconciliation slices. After the step, the reduction is measured
again on the graph (patching may remove more), so the latency target is met on this accounting exactly.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.consts import const_value
from ..prune.plan import Plan
from .profile import Profile

__all__ = ["UnitCosts"]


def _constant_elements(node: gs.Node) -> int:
    """Elements of NODE's floating-point constant inputs with at least one axis (its weights)."""
    total = 0
    for tensor in node.inputs:
        value = const_value(tensor)
        if value is not None and value.ndim >= 1 and np.issubdtype(value.dtype, np.floating):
            total += value.size
    return total


class UnitCosts:
    """A profile's node times against one pruning session's graph (see the module docstring)."""

    def __init__(self, profile: Profile, session) -> None:
        self.profile = profile
        names = {node.name for node in session.graph.nodes}
        self.node_ms = {name: ms for name, ms in profile.node_ms.items() if name in names}
        # Time of profiled nodes the session's graph does not hold (none when both name nodes alike).
        self.missing_ms = sum(ms for name, ms in profile.node_ms.items() if name not in names)
        self.weights = {node.name: _constant_elements(node) for node in session.graph.nodes
                        if node.name in self.node_ms}
        self.total_ms = profile.total_ms

    def node_now(self, node: gs.Node) -> float:
        """NODE's profiled ms, scaled by the share of its constants still there."""
        ms = self.node_ms.get(node.name, 0.0)
        original = self.weights.get(node.name, 0)
        if ms and original:
            ms *= _constant_elements(node) / original
        return ms

    def current_ms(self, session) -> float:
        """The session graph's kernel ms on this accounting (the profile's total before any prune)."""
        return sum(self.node_now(node) for node in session.graph.nodes) + self.profile.unattributed_ms \
            + self.missing_ms

    def reduction(self, session) -> float:
        """The share of the profiled kernel time the session's prunes removed, on this accounting."""
        return 1.0 - self.current_ms(session) / self.total_ms if self.total_ms else 0.0

    def saving_ms(self, session, plan: Plan) -> float:
        """What pruning PLAN's unit saves now (read off the plan; see the module docstring)."""
        if plan.action == "composite":
            return sum(self.saving_ms(session, session.plan(member)) for member in plan.members)
        removed = {id(node): node for node in _removed_nodes(plan)}
        saved = sum(self.node_now(node) for node in removed.values())
        if plan.action == "transform":
            saved += self._sliced_ms(plan.masks, removed)
        return saved

    def _sliced_ms(self, masks: dict, removed: dict) -> float:
        """Time the width reconciliation of MASKS saves on the nodes it slices and does not remove."""
        cut: dict[int, tuple[gs.Node, int]] = {}  # id(node) -> (node, elements sliced away)
        for entry in masks.values():
            node = entry["node"]
            if id(node) in removed or not entry["axes"]:
                continue
            value = const_value(node.inputs[entry["index"]])
            if value is None:
                continue
            kept = 1.0
            for keep in entry["axes"].values():
                kept *= float(np.mean(keep))  # the share of that axis's positions kept
            previous = cut.get(id(node), (node, 0))[1]
            cut[id(node)] = (node, previous + int(round(value.size * (1.0 - kept))))
        saved = 0.0
        for node, elements in cut.values():
            now = _constant_elements(node)
            if now:
                saved += self.node_now(node) * min(elements / now, 1.0)
        return saved


def _removed_nodes(plan: Plan) -> list[gs.Node]:
    """The nodes PLAN's Prune(f) takes out of the graph: a transform with its bias and coupled ops, or an
    attention region with its coupled ops."""
    coupled = [node for op in plan.coupled for node in op.nodes]
    if plan.action == "transform":
        return [plan.node, *plan.extra_nodes, *coupled]
    if plan.action == "attention":
        return [*plan.layer.attention.region, *coupled]
    return coupled
