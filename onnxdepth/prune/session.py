"""A pruning session: one editable copy of the model, its units, and Prune(f) applied step by step.

Pipeline per step: analyse channels -> list units -> plan a unit (pure: what it removes, what it costs)
-> apply the plan (ReplaceWithIdentity, ReconcileWidth, PruneCoupledOps) -> PatchIdentityArithmetic.

The session is the front: it holds the graph and its cached views (channel analysis, lifting) and
hands each stage to its module: head detection (graph/head.py), planning (planning.py, plans in
plan.py, channel choice in channels.py), the passes (apply.py), patching (patch.py), export (export.py).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..config import GRANULARITIES, HEADS, SEARCH_SPACES
from ..errors import InvalidArgumentError, UnsupportedModelError
from ..graph.contrib import SKIP_NORMS, unfuse_skip_norms
from ..graph.nbits import dequantize_nbits
from ..graph.channels import AnalysisError, ChannelAnalysis, analyze_channels, input_channel_axes
from ..graph.external import folder_of, swap_external_values
from ..graph.head import find_head
from ..graph.lift import Lifting, lift
from ..graph.shapes import concrete_input_shapes, infer_static_shapes
from ..graph.transformer import find_layers
from ..param_importance import ParamImportance, magnitude
from ..params import count_params
from .apply import apply_plan
from .export import to_model
from .patch import patch
from .plan import Plan, StructuralPlan, Unit, UnitPlan
from .planning import plan_unit, structural_ids, unit_plans

__all__ = ["Unit", "UnitPlan", "StructuralPlan", "Plan", "PruneSession", "ParamImportance", "GRANULARITIES",
           "SEARCH_SPACES"]

logger = logging.getLogger(__name__)


# Fused ops whose weights or layout the passes cannot see: refused with a reason. GroupQueryAttention and
# MultiHeadAttention (projected Q/K/V in), RotaryEmbedding and the skip-norms are read (`graph.contrib`).
UNSUPPORTED_FUSED_OPS = {"Attention", "PackedAttention", "PackedMultiHeadAttention", "DecoderAttention",
                         "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention",
                         "EmbedLayerNormalization", "SkipGroupNorm", *SKIP_NORMS}


class PruneSession:
    """Holds the editable graph-surgeon copy of one model and applies Prune(f) to it."""

    def __init__(self, model: onnx.ModelProto, *, input_shapes: dict | None = None, exclude: str | None = None,
                 importance: ParamImportance = magnitude, granularity: str = "fine", detect_head: bool = True,
                 search_space: str = "full", head: str = "branches"):
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        # A skip-norm becomes the residual Add and its norm (joined again on export); left fused only when its
        # mean / inverse-std outputs are read, and then refused below.
        model, self.unfused_skip_norms = unfuse_skip_norms(model)
        # int4 MatMulNBits become float MatMuls (re-quantized on export: `graph.nbits`).
        model, self.nbits = dequantize_nbits(model)
        # The model the session was made from, as it sees it (skip-norms split): the reference every stage runs.
        self.model = model
        fused = sorted({n.op_type for n in model.graph.node
                        if n.domain == "com.microsoft" and n.op_type in UNSUPPORTED_FUSED_OPS})
        if fused:
            raise UnsupportedModelError(
                f"the graph has ONNX Runtime fused ops onnxdepth cannot rewrite ({', '.join(fused)}): prune the "
                "plain export, then run the optimizer on the pruned model")
        self.graph = gs.import_onnx(model)
        folder = folder_of(model)
        if folder is not None:
            swap_external_values(self.graph, folder)  # external weights read memory-mapped, exported unchanged
        self._name_nodes()
        self.input_shapes = concrete_input_shapes(model, input_shapes)
        self.shapes = infer_static_shapes(model, self.input_shapes)
        try:
            self.exclude = re.compile(exclude) if exclude else None
        except re.error as exc:
            raise InvalidArgumentError(f"--exclude: invalid regular expression ({exc})") from exc
        self.importance = importance
        self.identity_nodes: set[int] = set()
        self.pruned: list[str] = []
        # Conv name -> the unpruned index of each output channel it keeps (only Convs whose outputs were cut).
        self.output_channels: dict[str, np.ndarray] = {}
        # MatMul name -> {weight axis: the unpruned index of every row / column it keeps} (sliced ones only).
        self.weight_slices: dict[str, dict] = {}
        self.params_before = count_params(self.graph)
        self._analysis: ChannelAnalysis | None = None
        self._lifting: Lifting | None = None
        # A cut-out layer (block-local scoring) has no head: its output is just the next layer's input.
        # Its KV-cache inputs are fed directly, so they need not stay consistent with other layers either.
        self.detect_head = detect_head
        if head not in HEADS:
            raise InvalidArgumentError(f"--head {head}: expected one of {', '.join(HEADS)}")
        # "last": only each output's last transform; "branches": also the chains behind it (Detect branches).
        self.head = head
        self.head_units = find_head(self.graph, with_branches=head == "branches") if detect_head else set()
        self.input_axes = input_channel_axes(self.graph, self.shapes)
        self.graph.toposort()
        self.layers = find_layers(self.graph, lift(self.graph), self.head_units)
        if search_space not in SEARCH_SPACES:
            raise InvalidArgumentError(f"--search-space {search_space}: expected one of {', '.join(SEARCH_SPACES)}")
        # "reduced" (the thesis's CNN baseline, Table 4.4): only units whose input and output widths match,
        # so that no other layer is ever width-pruned.
        self.search_space = search_space
        self.set_options(importance=importance, granularity=granularity)
        self.removed_graph_io: list[str] = []  # past/present names of pruned attention blocks (KV cache)

    def set_options(self, *, importance: ParamImportance, granularity: str) -> None:
        """Swap the per-parameter importance and the unit granularity of a session that has pruned nothing
        (defaults are resolved once the model's layers are known)."""
        if self.pruned:
            raise InvalidArgumentError("set_options() is only for sessions that have not pruned anything")
        if granularity not in GRANULARITIES:
            raise InvalidArgumentError(f"--granularity {granularity}: expected one of {', '.join(GRANULARITIES)}")
        if granularity != "fine" and not self.layers:
            raise InvalidArgumentError(f"--granularity {granularity}: needs a transformer (no attention block found)")
        self.importance, self.granularity = importance, granularity
        self.invalidate()

    def fork(self) -> "PruneSession":
        """An independent copy of a session that has not pruned anything yet, without re-running shape
        inference or head detection (block-local scoring prunes one unit per copy)."""
        if self.pruned:
            raise InvalidArgumentError("fork() is only for sessions that have not pruned anything")
        clone = object.__new__(PruneSession)
        clone.__dict__.update(self.__dict__)
        clone.graph = self.graph.copy()
        clone.identity_nodes = set()
        clone.pruned = []
        clone.output_channels = {}
        clone.weight_slices = {}
        clone.removed_graph_io = []
        clone._analysis = None
        clone._lifting = None
        clone.graph.toposort()
        clone.layers = find_layers(clone.graph, lift(clone.graph), clone.head_units)
        return clone

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _name_nodes(self) -> None:
        """Give unnamed or duplicate-named nodes a stable name (unit ids must be unique)."""
        seen: set[str] = set()
        for index, node in enumerate(self.graph.nodes):
            if not node.name or node.name in seen:
                node.name = f"{node.op}_{index}"
            seen.add(node.name)

    def invalidate(self) -> None:
        """Drop the cached analysis and lifting: call after editing the graph (or swapping importance)."""
        self._analysis = None
        self._lifting = None

    _invalidate = invalidate  # the old name, still used by callers

    @property
    def lifting(self) -> Lifting:
        if self._lifting is None:
            self._lifting = lift(self.graph)
        return self._lifting

    @property
    def analysis(self) -> ChannelAnalysis:
        if self._analysis is None:
            self.graph.toposort()
            try:
                self._analysis = analyze_channels(self.graph, self.shapes, self.input_axes)
            except AnalysisError as exc:
                raise UnsupportedModelError(f"inconsistent channel sizes: {exc}") from exc
        return self._analysis

    def params(self) -> int:
        return count_params(self.graph)

    def node(self, unit_id: str) -> gs.Node:
        for node in self.graph.nodes:
            if node.name == unit_id:
                return node
        raise InvalidArgumentError(f"no unit named {unit_id!r}")

    # -- units and plans (pure) ----------------------------------------------------------------------
    def structural_ids(self) -> list[str]:
        """Ids of the transformer units at this session's granularity, in layer order."""
        return structural_ids(self.layers, self.granularity)

    def units(self) -> list[Unit]:
        """Every unit with the reason it is excluded, if any (see planning.unit_plans)."""
        return [unit for unit, _ in unit_plans(self)]

    def prunable_plans(self) -> list[Plan]:
        """Plans of every currently prunable unit (re-planned on the current graph)."""
        plans: dict[str, Plan] = {}
        for unit, plan in unit_plans(self):
            if unit.prunable:
                plans[unit.id] = plan
        return list(plans.values())

    def plan(self, unit_id: str) -> Plan:
        """Plan Prune(f) for UNIT_ID (pure): what it removes, what it costs, its score, why not if it can't."""
        return plan_unit(self, unit_id)

    # -- editing -------------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> None:
        """Prune(f): run the pass PLAN names (apply.PASSES); refuses a plan with a reason."""
        if plan.reason is not None:
            raise InvalidArgumentError(f"unit {plan.unit_id} cannot be pruned: {plan.reason}")
        apply_plan(self, plan)

    def patch(self) -> int:
        """Patch redundant arithmetic (x op id(x) -> x) and duplicate Concat inputs; return edits made."""
        return patch(self)

    def to_model(self, template: onnx.ModelProto, keep: set[str] | None = None) -> onnx.ModelProto:
        """Export a copy (see export.to_model): the session can go on pruning after."""
        return to_model(self.graph, self.identity_nodes, template, keep,
                        shapes=self.shapes if self.unfused_skip_norms else None,
                        nbits=(self.nbits, self.weight_slices) if self.nbits else None)
