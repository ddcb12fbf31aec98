"""What a pruning step will do, as data: units, and the plans of Prune(f) for them.

Every plan satisfies one protocol, `Plan`: the unit it prunes, its kind, why it cannot be pruned
(if so), what it removes and what it costs. Code that handles plans reads that protocol only; the pass
that applies a plan is looked up by its `action` (see apply.py), never by the plan's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.lift import Lifted
from ..graph.transformer import TransformerLayer

__all__ = ["Unit", "Plan", "UnitPlan", "StructuralPlan", "unit_of"]


@dataclass
class Unit:
    """A pruning unit (Sec. 3.2.5): its trigger transform and why it can or cannot be pruned."""

    id: str
    op: str
    params: int
    in_channels: int
    out_channels: int
    changes_channels: bool
    prunable: bool
    excluded_reason: str | None
    kind: str = "layer"

    def to_json(self) -> dict:
        return {"id": self.id, "op": self.op, "kind": self.kind, "params": self.params,
                "in_channels": self.in_channels, "out_channels": self.out_channels,
                "changes_channels": self.changes_channels, "prunable": self.prunable,
                "excluded_reason": self.excluded_reason}


class Plan(Protocol):
    """The interface every plan offers (selection, reporting and the passes read only this)."""

    unit_id: str
    kind: str  # "layer", an MLP transform's role ("mlp_up", ...), "attention", "mlp" or "block"
    reason: str | None  # why the unit cannot be pruned; None if it can
    params_removed: int
    score: float
    in_channels: int  # the unit's input width (a transformer unit: the layer's width)
    out_channels: int

    @property
    def op(self) -> str:
        """The unit's op as listed (the trigger's ONNX op, or Attention / Layers)."""

    @property
    def action(self) -> str:
        """The pass that applies this plan (a key of apply.PASSES)."""

    def describe(self) -> dict:
        """The plan as a JSON step of the saved plan."""


@dataclass
class UnitPlan:
    """What Prune(f) of one transform removes, computed without touching the graph."""

    unit_id: str
    node: gs.Node
    removed_roots: np.ndarray  # channel classes width-pruned away to reconcile dimensions
    coupled: list[Lifted]
    own_params: int
    params_removed: int
    score: float
    reason: str | None = None
    masks: dict = field(default_factory=dict)  # (id(node), input index) -> {axis: keep mask}
    extra_nodes: list = field(default_factory=list)  # nodes removed with the trigger (a MatMul's bias Add)
    in_channels: int = 0
    out_channels: int = 0
    kind: str = "layer"

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def action(self) -> str:
        return "transform"

    def describe(self) -> dict:
        return {"unit": self.unit_id, "removed_channels": int(len(self.removed_roots)),
                "coupled_ops": [op.head.op for op in self.coupled], "params_removed": self.params_removed}


@dataclass
class StructuralPlan:
    """Prune an attention block (Algorithm 7) or a composite unit (MLP sub-layer, whole block)."""

    unit_id: str
    kind: str  # "attention" | "mlp" | "block"
    layer: TransformerLayer
    members: list[str]  # for composites: member unit ids applied in order
    coupled: list[Lifted]
    params_removed: int
    score: float
    reason: str | None = None
    in_channels: int = 0  # the layer's width, in and out: a transformer unit keeps it
    out_channels: int = 0

    @property
    def op(self) -> str:
        return "Attention" if self.kind == "attention" else "Layers"

    @property
    def action(self) -> str:
        return "attention" if self.kind == "attention" else "composite"

    def describe(self) -> dict:
        return {"unit": self.unit_id, "kind": self.kind, "members": self.members,
                "coupled_ops": [op.head.op for op in self.coupled], "params_removed": self.params_removed}


def unit_of(plan: Plan, reason: str | None) -> Unit:
    """The unit PLAN prunes, listed with REASON (None: prunable)."""
    return Unit(plan.unit_id, plan.op, plan.params_removed, plan.in_channels, plan.out_channels,
                plan.in_channels != plan.out_channels, reason is None, reason, plan.kind)
