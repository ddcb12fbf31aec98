"""A pruning session: one editable copy of the model, its units, and Prune(f) applied step by step.

Pipeline per step: analyse channels -> list units -> plan a unit (pure: what it removes, what it costs)
-> apply the plan (ReplaceWithIdentity, ReconcileWidth, PruneCoupledOps) -> PatchIdentityArithmetic.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InvalidArgumentError, UnsupportedModelError
from ..graph.channels import (UNARY_PASSTHROUGH, AnalysisError, ChannelAnalysis, Site, analyze_channels,
                              input_channel_axes)
from ..graph.consts import const_value, set_const_input
from ..graph.head import find_head, spatial_change
from ..graph.lift import Lifted, NodeClass, lift, transform_weight_index
from ..graph.shapes import concrete_input_shapes, infer_static_shapes
from ..graph.transformer import TransformerLayer, find_layers
from ..param_importance import ParamImportance, magnitude
from ..params import count_params
from .search import find_coupled_ops

__all__ = ["Unit", "UnitPlan", "PruneSession", "ParamImportance"]

logger = logging.getLogger(__name__)

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


@dataclass
class UnitPlan:
    """What Prune(f) removes, computed without touching the graph."""

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

    def describe(self) -> dict:
        return {"unit": self.unit_id, "kind": self.kind, "members": self.members,
                "coupled_ops": [op.head.op for op in self.coupled], "params_removed": self.params_removed}


GRANULARITIES = ("fine", "sublayer", "block")
#: Unit search spaces: every unit, or (CNN baseline) only those that keep the channel count.
SEARCH_SPACES = ("full", "reduced")

# Contrib ops that onnxruntime.transformers' optimizer fuses transformer blocks into.
FUSED_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "SimplifiedLayerNormalization",
             "SkipSimplifiedLayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
             "RotaryEmbedding", "FastGelu", "BiasGelu", "BiasSplitGelu", "BiasAdd", "PackedAttention",
             "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention", "SparseAttention"}

# Exclusion reasons in the order they are checked (the first that applies is reported).
HEAD = "graph head"
USER = "user exclude"
SPATIAL = "changes spatial dims"


class PruneSession:
    """Holds the editable graph-surgeon copy of one model and applies Prune(f) to it."""

    def __init__(self, model: onnx.ModelProto, *, input_shapes: dict | None = None, exclude: str | None = None,
                 importance: ParamImportance = magnitude, granularity: str = "fine", detect_head: bool = True,
                 search_space: str = "full"):
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        fused = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft" and n.op_type in FUSED_OPS})
        if fused:
            raise UnsupportedModelError(
                f"the graph was fused by ONNX Runtime's transformer optimizer ({', '.join(fused)}): not supported "
                "yet; prune the plain export, then run the optimizer on the pruned model")
        self.graph = gs.import_onnx(model)
        self._name_nodes()
        self.input_shapes = concrete_input_shapes(model, input_shapes)
        self.shapes = infer_static_shapes(model, self.input_shapes)
        try:
            self.exclude = re.compile(exclude) if exclude else None
        except re.error as exc:
            raise InvalidArgumentError(f"--exclude: invalid regular expression ({exc})") from None
        self.importance = importance
        self.identity_nodes: set[int] = set()
        self.pruned: list[str] = []
        self.params_before = count_params(self.graph)
        self._analysis: ChannelAnalysis | None = None
        self._lifting = None
        # A cut-out layer (block-local scoring) has no head: its output is just the next layer's input.
        # Its KV-cache inputs are fed directly, so they need not stay consistent with other layers either.
        self.detect_head = detect_head
        self.head_units = self._find_head() if detect_head else set()
        self.input_axes = input_channel_axes(self.graph, self.shapes)
        self.graph.toposort()
        self.layers = find_layers(self.graph, lift(self.graph), self.head_units)
        if search_space not in SEARCH_SPACES:
            raise InvalidArgumentError(f"--search-space {search_space}: expected one of {', '.join(SEARCH_SPACES)}")
        # "reduced" (the thesis's CNN baseline, Table 4.4): only units whose input and output widths match,
        # so that no other layer is ever width-pruned.
        self.search_space = search_space
        if granularity not in GRANULARITIES:
            raise InvalidArgumentError(f"--granularity {granularity}: expected one of {', '.join(GRANULARITIES)}")
        if granularity != "fine" and not self.layers:
            raise InvalidArgumentError(f"--granularity {granularity}: needs a transformer (no attention block found)")
        self.granularity = granularity
        self.removed_graph_io: list[str] = []  # past/present names of pruned attention blocks (KV cache)

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

    def _invalidate(self) -> None:
        self._analysis = None
        self._lifting = None

    @property
    def lifting(self):
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
                raise UnsupportedModelError(f"inconsistent channel sizes: {exc}") from None
        return self._analysis

    def params(self) -> int:
        return count_params(self.graph)

    def node(self, unit_id: str) -> gs.Node:
        for node in self.graph.nodes:
            if node.name == unit_id:
                return node
        raise InvalidArgumentError(f"no unit named {unit_id!r}")

    # -- exclusions ----------------------------------------------------------------------------------
    def _find_head(self) -> set[str]:
        return find_head(self.graph)

    def _spatial_change(self, node: gs.Node) -> bool:
        return spatial_change(node, self.shapes)

    # -- units ---------------------------------------------------------------------------------------
    def structural_ids(self) -> list[str]:
        """Ids of the transformer units at this session's granularity, in layer order."""
        ids = []
        for layer in self.layers:
            prefix = f"layer{layer.index}"
            if self.granularity == "block":
                ids.append(f"{prefix}.block")
            else:
                ids.append(f"{prefix}.attention")
                if self.granularity == "sublayer":
                    ids.append(f"{prefix}.mlp")
                else:
                    ids.extend(f"{prefix}.{kind}" for kind in layer.mlp)
        return ids

    def _layer_transforms(self) -> set[int]:
        return {id(n) for layer in self.layers for n in [*layer.attention.projections, *layer.mlp.values()]}

    def units(self) -> list[Unit]:
        """Every unit with the reason it is excluded, if any.

        Transformers: attention blocks and MLP sub-layer transforms (fine), attention + MLP (sublayer)
        or whole layers (block); transforms outside the layers are listed as plain layer units.
        """
        units = []
        self._plans: dict = {}
        analysis = self.analysis
        for unit_id in self.structural_ids():
            if unit_id in self.pruned:
                continue
            plan = self.plan(unit_id)
            if plan.reason is None:
                self._plans[unit_id] = plan
            kind = unit_id.split(".", 1)[1]
            if isinstance(plan, StructuralPlan):
                width = self._width(plan.layer.attention.input)
                units.append(Unit(unit_id, "Attention" if kind == "attention" else "Layers", plan.params_removed,
                                  width, width, False, plan.reason is None, plan.reason, kind))
            else:
                info = analysis.transforms[plan.node.name]
                n_in, n_out = len(info.in_classes), len(info.out_classes)
                units.append(Unit(unit_id, plan.node.op, plan.params_removed, n_in, n_out, n_in != n_out,
                                  plan.reason is None, plan.reason, kind))
        in_layers = self._layer_transforms()
        for name, info in analysis.transforms.items():
            if id(info.node) in self.identity_nodes or id(info.node) in in_layers:
                continue
            plan = self.plan(name)
            reason = plan.reason
            n_in, n_out = len(info.in_classes), len(info.out_classes)
            if reason is None and self.search_space == "reduced" and n_in != n_out:
                reason = "reduced search space: changes channels"
            if reason is None:
                self._plans[name] = plan
            params = plan.params_removed
            units.append(Unit(name, info.node.op, params, n_in, n_out, n_in != n_out, reason is None, reason))
        return units

    def prunable_plans(self) -> list[UnitPlan]:
        """Plans of every currently prunable unit (re-planned on the current graph)."""
        self.units()
        return list(self._plans.values())

    def _own_params(self, node: gs.Node, all_inputs: bool = False) -> int:
        total = 0
        for tensor in (node.inputs if all_inputs else node.inputs[1:]):
            value = const_value(tensor)
            if value is not None and value.ndim >= 1 and np.issubdtype(value.dtype, np.floating):
                total += value.size
        return total

    # -- planning (pure) -----------------------------------------------------------------------------
    def _width(self, tensor: gs.Tensor) -> int:
        info = self.analysis.axes.get(tensor.name)
        return len(info.classes) if info is not None else 0

    def _layer(self, unit_id: str) -> tuple[TransformerLayer, str]:
        prefix, _, kind = unit_id.partition(".")
        try:
            return self.layers[int(prefix.removeprefix("layer"))], kind
        except (ValueError, IndexError):
            raise InvalidArgumentError(f"no unit named {unit_id!r}") from None

    def plan(self, unit_id: str):
        """Plan Prune(f) for UNIT_ID (pure): what it removes, what it costs, its score, why not if it can't."""
        if unit_id not in self.analysis.transforms and re.fullmatch(r"layer\d+\.\w+", unit_id) and self.layers:
            layer, kind = self._layer(unit_id)
            if kind in layer.mlp:
                plan = self._plan_transform(layer.mlp[kind].name)
                plan.unit_id = unit_id
                return plan
            if kind == "attention":
                return self._plan_attention(unit_id, layer)
            if kind in ("mlp", "block"):
                return self._plan_composite(unit_id, layer, kind)
            raise InvalidArgumentError(f"no unit named {unit_id!r}")
        return self._plan_transform(unit_id)

    def _plan_attention(self, unit_id: str, layer: TransformerLayer) -> StructuralPlan:
        """Algorithm 7: activations coupled to O (T1), norms coupled to {Q, K, V} (T2), the whole region."""
        block = layer.attention
        if any(n.outputs == [] for n in block.projections):
            return StructuralPlan(unit_id, "attention", layer, [], [], 0, 0.0, "already pruned")
        outputs = {id(t) for t in self.graph.outputs}
        acts = [op for op in find_coupled_ops(block.o, {id(block.o)}, self.lifting, outputs)
                if op.cls is NodeClass.ACTIVATION]
        norms = [op for op in find_coupled_ops(block.q, {id(block.q), id(block.k), id(block.v)}, self.lifting,
                                               outputs) if op.cls is NodeClass.NORM]
        nodes = list(block.region) + [n for op in acts + norms for n in op.nodes]
        params = sum(self._own_params(n, all_inputs=True) for n in nodes)
        score = sum(float(self.importance(n, i, const_value(t)).sum()) for n in block.projections
                    for i, t in enumerate(n.inputs) if i > 0 and const_value(t) is not None)
        reason = USER if self.exclude is not None and self.exclude.search(unit_id) else None
        if reason is None and self.detect_head and self._carries_past_length(block):
            reason = "the last attention block with a KV cache carries the past length"
        return StructuralPlan(unit_id, "attention", layer, [], acts + norms, params, score, reason)

    def _carries_past_length(self, block) -> bool:
        """True if a Shape outside BLOCK reads one of its past inputs and no other layer's cache is left."""
        region = {id(n) for n in block.region}
        pasts = [t for n in block.region for t in n.inputs if t.name.startswith("past_key_values.")
                 and any(t is g for g in self.graph.inputs)]
        for past in pasts:
            outside = [c for c in past.outputs if id(c) not in region]
            if not outside:
                continue
            kind = past.name.rsplit(".", 1)[-1]
            others = [t for t in self.graph.inputs if t is not past and t.name.startswith("past_key_values.")
                      and t.name.endswith("." + kind)]
            if not others:
                return True
        return False

    def _plan_composite(self, unit_id: str, layer: TransformerLayer, kind: str) -> StructuralPlan:
        prefix = f"layer{layer.index}"
        mlp_ids = [f"{prefix}.{k}" for k in ("mlp_gate", "mlp_up", "mlp_down", "mlp_0", "mlp_1") if k in layer.mlp]
        mlp_ids = [m for m in mlp_ids if m not in self.pruned]
        members = ([f"{prefix}.attention"] if kind == "block" and f"{prefix}.attention" not in self.pruned
                   else []) + mlp_ids
        params, score, reason = 0, 0.0, None
        mlp_nodes = [layer.mlp[m.split(".", 1)[1]] for m in mlp_ids]
        for member in members:
            if member.endswith(".attention"):
                plan = self._plan_attention(member, layer)
                params += plan.params_removed
                score += plan.score
                reason = reason or plan.reason
        for node in mlp_nodes:
            params += sum(self._own_params(n) for n in [node, *self._bias_add(node, 0, any_width=True)])
            score += sum(float(self.importance(node, i, const_value(t)).sum())
                         for i, t in enumerate(node.inputs) if i > 0 and const_value(t) is not None)
        if mlp_nodes:
            # The post-attention norm goes with the whole MLP (FindNorm with T = its input transforms).
            first_inputs = {id(n) for n in mlp_nodes if n.inputs[0] is mlp_nodes[0].inputs[0]}
            outputs = {id(t) for t in self.graph.outputs}
            for op in find_coupled_ops(mlp_nodes[0], first_inputs, self.lifting, outputs):
                if op.cls is NodeClass.NORM:
                    params += sum(self._own_params(n, all_inputs=True) for n in op.nodes)
        if self.exclude is not None and self.exclude.search(unit_id):
            reason = USER
        if not members:
            reason = "already pruned"
        return StructuralPlan(unit_id, kind, layer, members, [], params, score, reason)

    def _plan_transform(self, unit_id: str) -> UnitPlan:
        """Plan Prune(f) for a transform: channels to drop (lowest importance, Eq. 3.10), coupled ops, cost."""
        a = self.analysis
        if unit_id not in a.transforms:
            raise InvalidArgumentError(f"no unit named {unit_id!r}")
        info = a.transforms[unit_id]
        node = info.node
        n_in, n_out = len(info.in_classes), len(info.out_classes)
        bias = self._bias_add(node, n_out)
        static_reason = self._static_exclusion(node)
        coupled = find_coupled_ops(node, {id(node)}, self.lifting, {id(t) for t in self.graph.outputs})
        removed_nodes = {id(node)} | {id(n) for n in bias} | {id(n) for op in coupled for n in op.nodes}
        # A coupled op's parameters may sit on any input (a norm's Mul(weight, x) has it first).
        own = sum(self._own_params(n) for n in [node, *bias]) + sum(
            self._own_params(n, all_inputs=True) for op in coupled for n in op.nodes)
        if static_reason is not None:
            return UnitPlan(unit_id, node, np.zeros(0, dtype=np.int64), coupled, own, own, 0.0, static_reason,
                            extra_nodes=bias)
        own_score = sum(float(self.importance(node, i, const_value(t)).sum())
                        for i, t in enumerate(node.inputs[1:], start=1) if const_value(t) is not None)
        removed_roots = np.zeros(0, dtype=np.int64)
        reason = None
        masks: dict = {}
        extra_params, extra_score = 0, 0.0
        if n_in != n_out:
            if info.kind != "dense":
                reason = "unprovable coupling: grouped convolution changes channels"
            else:
                # i < o: drop o - i of the output group's channels; i > o: drop i - o of the input group's.
                pool_classes, other = (info.out_classes, info.in_classes) if n_in < n_out else (info.in_classes,
                                                                                               info.out_classes)
                pool = a.roots(pool_classes)
                other_roots = set(a.roots(other).tolist())  # noqa: the trigger's own two sides
                if other_roots & set(pool.tolist()):
                    reason = "unprovable coupling: input and output channels are tied"
                else:
                    reason, removed_roots, extra_score = self._choose_channels(
                        a, pool, abs(n_out - n_in), removed_nodes)
                    if reason is None:
                        masks = self._masks(a, removed_roots, removed_nodes)
                        extra_params = self._removed_params(masks)
        return UnitPlan(unit_id, node, removed_roots, coupled, own, own + extra_params, own_score + extra_score,
                        reason, masks, extra_nodes=bias)

    def _static_exclusion(self, node: gs.Node) -> str | None:
        if node.name in self.head_units:
            return HEAD
        if self.exclude is not None and self.exclude.search(node.name):
            return USER
        if self._spatial_change(node):
            return SPATIAL
        return None

    def _bias_add(self, node: gs.Node, n_out: int, any_width: bool = False) -> list[gs.Node]:
        """A MatMul's bias: the single following Add of a constant with N_OUT values on the last axis."""
        if node.op != "MatMul":
            return []
        out = node.outputs[0]
        if len(out.outputs) != 1 or id(out) in {id(t) for t in self.graph.outputs}:
            return []
        add = out.outputs[0]
        if add.op != "Add" or len(add.inputs) != 2:
            return []
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        value = const_value(other)
        if value is None or value.ndim < 1 or value.size != value.shape[-1]:
            return []
        if not any_width and value.shape[-1] != n_out:
            return []
        return [add]

    def _choose_channels(self, a: ChannelAnalysis, pool: np.ndarray, need: int, skip_nodes: set[int]
                         ) -> tuple[str | None, np.ndarray, float]:
        """Pick channel classes of POOL (one tensor's channel roots) covering exactly NEED positions.

        A class may occupy several positions of the tensor (a Concat of a tensor with its pooled
        copies, as in SPPF): removing it removes all of them. Lowest importance per position first.
        """
        pinned, blocked = a.pinned_roots(), a.blocked_roots()
        roots, counts = np.unique(pool, return_counts=True)
        multiplicity = dict(zip(roots.tolist(), counts.tolist()))
        candidates = [r for r in multiplicity if r not in pinned and r not in blocked]
        if sum(multiplicity[r] for r in candidates) < need:
            bad = next((pinned.get(r) or blocked.get(r) for r in multiplicity if r in pinned or r in blocked),
                       "coupling")
            prefix = "width change would alter " if bad.startswith("graph") else "unprovable coupling: "
            return prefix + bad, np.zeros(0, dtype=np.int64), 0.0
        scores = self._channel_scores(a, set(candidates), skip_nodes)
        ranked = sorted(candidates, key=lambda r: (scores.get(r, 0.0) / multiplicity[r], r))
        # Positions left per tensor, so that no tensor is pruned down to zero channels.
        candidate_set = set(candidates)
        is_candidate = a.lookup(candidates)
        left: dict[str, int] = {}
        tensors_of: dict[int, list[tuple[str, int]]] = {}
        for name in a.axes:
            tensor_roots = a.tensor_roots(name)
            if not is_candidate[tensor_roots].any():
                continue
            left[name] = len(tensor_roots)
            for root, count in zip(*np.unique(tensor_roots, return_counts=True)):
                if int(root) in candidate_set:
                    tensors_of.setdefault(int(root), []).append((name, int(count)))
        for order in (ranked, sorted(ranked, key=lambda r: -multiplicity[r])):
            chosen = self._greedy_cover(order, multiplicity, need, left, tensors_of)
            if chosen is not None:
                break
        if chosen is None:
            return ("unprovable coupling: channel copies cannot be split to the needed width",
                    np.zeros(0, dtype=np.int64), 0.0)
        return None, np.array(sorted(chosen), dtype=np.int64), sum(scores.get(r, 0.0) for r in chosen)

    @staticmethod
    def _greedy_cover(order, multiplicity, need, left, tensors_of) -> list[int] | None:
        left = dict(left)
        chosen, covered = [], 0
        for root in order:
            if covered + multiplicity[root] > need:
                continue
            if any(left[name] - count <= 0 for name, count in tensors_of.get(root, [])):
                continue
            for name, count in tensors_of.get(root, []):
                left[name] -= count
            chosen.append(root)
            covered += multiplicity[root]
            if covered == need:
                return chosen
        return None

    def _channel_scores(self, a: ChannelAnalysis, roots: set[int], skip_nodes: set[int]) -> dict[int, float]:
        """Total importance of each channel class over every site it occurs in (the group sums of 3.10)."""
        scores: dict[int, float] = {}
        wanted = a.lookup(roots)
        for site in a.sites:
            if site.kind in ("split", "shape") or id(site.node) in skip_nodes:
                continue
            site_roots = a.site_roots(site)
            hit = wanted[site_roots]
            if not hit.any():
                continue
            value = const_value(site.node.inputs[site.input_index])
            imp = self.importance(site.node, site.input_index, value)
            # Sum over every axis except the channel axis of this site.
            per_channel = imp.sum(axis=tuple(ax for ax in range(imp.ndim) if ax != site.axis))
            for root, score in zip(site_roots[hit].tolist(), per_channel[hit].tolist()):
                scores[root] = scores.get(root, 0.0) + score
        return scores

    @staticmethod
    def _masks(a: ChannelAnalysis, removed_roots: np.ndarray, skip_nodes: set[int]) -> dict:
        masks: dict = {}
        removed = a.lookup(removed_roots)
        for site in a.sites:
            if id(site.node) in skip_nodes:
                continue
            keep = ~removed[a.site_roots(site)]
            if keep.all():
                continue
            key = (id(site.node), site.input_index)
            entry = masks.setdefault(key, {"node": site.node, "index": site.input_index, "axes": {}, "sites": []})
            entry["sites"].append((site, keep))
            if site.kind in ("weight_in", "weight_out", "param"):
                prev = entry["axes"].get(site.axis)
                entry["axes"][site.axis] = keep if prev is None else (prev & keep)
        return masks

    @staticmethod
    def _removed_params(masks: dict) -> int:
        removed = 0
        for entry in masks.values():
            if not entry["axes"]:
                continue
            value = const_value(entry["node"].inputs[entry["index"]])
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            kept_shape = list(value.shape)
            for axis, keep in entry["axes"].items():
                kept_shape[axis] = int(keep.sum())
            removed += value.size - int(np.prod(kept_shape))
        return removed

    # -- applying ------------------------------------------------------------------------------------
    def apply(self, plan) -> None:
        """Prune(f): slice reconciled widths, replace the trigger and its coupled ops by identities."""
        if plan.reason is not None:
            raise InvalidArgumentError(f"unit {plan.unit_id} cannot be pruned: {plan.reason}")
        if isinstance(plan, StructuralPlan):
            if plan.kind == "attention":
                self._apply_attention(plan)
            else:
                for member in plan.members:
                    member_plan = self.plan(member)
                    if member_plan.reason is not None:
                        raise UnsupportedModelError(f"{plan.unit_id}: member {member} cannot be pruned: "
                                                    f"{member_plan.reason}")
                    self.apply(member_plan)
                self.pruned.append(plan.unit_id)
            return
        self._apply_masks(plan.masks)
        trigger_nodes = [plan.node, *plan.extra_nodes]
        self._replace_with_identity(plan.node.inputs[0], trigger_nodes[-1].outputs[0], trigger_nodes)
        for op in plan.coupled:
            self._replace_with_identity(op.input, op.output, op.nodes)
        self.pruned.append(plan.unit_id)
        self.graph.cleanup()
        self._invalidate()
        self.patch()

    def _apply_attention(self, plan: StructuralPlan) -> None:
        """Algorithm 7: coupled ops and the whole attention region become identities.

        With a KV cache, the block's past key/value inputs and present outputs go with it.
        """
        block = plan.layer.attention
        for op in plan.coupled:
            self._replace_with_identity(op.input, op.output, op.nodes)
        region_inputs = [t for n in block.region for t in n.inputs]
        graph_inputs = {id(t) for t in self.graph.inputs}
        produced = [t for n in block.region for t in n.outputs if t is not block.output]
        for node in block.region:
            node.outputs.clear()
        self._replace_with_identity(block.input, block.output, [])
        produced_ids = {id(t) for t in produced}
        self.removed_graph_io.extend(t.name for t in self.graph.outputs if id(t) in produced_ids)
        self.graph.outputs = [t for t in self.graph.outputs if id(t) not in produced_ids]
        self.graph.cleanup()
        for tensor in region_inputs:
            if id(tensor) not in graph_inputs or not tensor.name.startswith("past_key_values."):
                continue
            if tensor.outputs and all(c.op in ("Shape", "Size") for c in tensor.outputs):
                # The exporter reads the past length off this layer's cache: read it off another layer's.
                kind = tensor.name.rsplit(".", 1)[-1]
                survivor = next((t for t in self.graph.inputs if t is not tensor and t.name.startswith(
                    "past_key_values.") and t.name.endswith("." + kind) and t.outputs), None)
                if survivor is not None:
                    for reader in list(tensor.outputs):
                        for k, t in enumerate(reader.inputs):
                            if t is tensor:
                                reader.inputs[k] = survivor
            if not tensor.outputs:
                self.graph.inputs = [t for t in self.graph.inputs if t is not tensor]
                self.removed_graph_io.append(tensor.name)
        self.pruned.append(plan.unit_id)
        self._invalidate()
        self.patch()

    def _apply_masks(self, masks: dict) -> None:
        for entry in masks.values():
            node, index = entry["node"], entry["index"]
            value = const_value(node.inputs[index])
            for axis, keep in entry["axes"].items():
                value = np.compress(keep, value, axis=axis)
            for site, keep in entry["sites"]:
                if site.kind == "split":
                    self._resize_split(site, keep)
                elif site.kind == "shape":
                    value = value.copy()
                    value[site.axis] = int(keep.sum())
            if entry["axes"] or any(s.kind == "shape" for s, _ in entry["sites"]):
                set_const_input(node, index, value, node.inputs[index].name or node.name)
            if node.op == "Conv" and index == 1 and int(node.attrs.get("group", 1)) > 1:
                # Depthwise conv: one group per channel, so the group count follows the kept channels.
                node.attrs["group"] = int(value.shape[0])

    def _resize_split(self, site: Site, keep: np.ndarray) -> None:
        sizes, start = [], 0
        for part in site.classes_per_output:
            # KEEP is aligned with the Split input's channels; each output owns a consecutive range.
            sizes.append(int(keep[start:start + len(part)].sum()))
            start += len(part)
        node = site.node
        if self.opset >= 13:
            const = gs.Constant(f"{node.name}__split_od", np.array(sizes, dtype=np.int64))
            if len(node.inputs) > 1:
                node.inputs[1] = const
            else:
                node.inputs.append(const)
            node.attrs.pop("num_outputs", None)
        else:
            node.attrs["split"] = sizes

    def _replace_with_identity(self, source: gs.Tensor, target: gs.Tensor, nodes: list[gs.Node]) -> None:
        for node in nodes:
            node.outputs.clear()
        name = f"{nodes[-1].name}__pruned" if nodes else f"{target.name}__pruned"
        identity = gs.Node("Identity", name=name, inputs=[source], outputs=[target])
        self.graph.nodes.append(identity)
        self.identity_nodes.add(id(identity))

    # -- identity patching (Eq. 3.5-3.7) ------------------------------------------------------------
    def _resolve(self, tensor: gs.Tensor) -> tuple[gs.Tensor, bool]:
        """Follow pruned identities back to their source (Algorithm 6)."""
        via = False
        while tensor.inputs and id(tensor.inputs[0]) in self.identity_nodes:
            tensor = tensor.inputs[0].inputs[0]
            via = True
        return tensor, via

    def patch(self) -> int:
        """Patch redundant arithmetic (x op id(x) -> x) and duplicate Concat inputs; return edits made."""
        edits = 0
        changed = True
        while changed:
            changed = False
            self.graph.toposort()
            for node in list(self.graph.nodes):
                if not node.outputs:
                    continue
                if node.op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2 and \
                        all(const_value(t) is None for t in node.inputs):
                    (a, via_a), (b, via_b) = self._resolve(node.inputs[0]), self._resolve(node.inputs[1])
                    if a is b and (via_a or via_b):
                        # x + 0, x - 0, x * 1, x / 1: the op reduces to its surviving operand.
                        self._replace_with_identity(a, node.outputs[0], [node])
                        changed = True
                elif node.op == "Concat" and self._patch_concat(node):
                    changed = True
                if changed:
                    edits += 1
                    self.graph.cleanup()
                    self._invalidate()
                    break
        return edits

    def _patch_concat(self, node: gs.Node) -> bool:
        """Drop repeated copies of one source in a channel Concat and width-prune its successors (3.6-3.7)."""
        a = self.analysis
        out = a.axes.get(node.outputs[0].name)
        if out is None:
            return False
        resolved = [self._resolve(t) for t in node.inputs]
        if not any(via for _, via in resolved):
            return False
        widths = [len(a.axes[t.name].classes) if t.name in a.axes else None for t in node.inputs]
        if None in widths or sum(widths) != out.size:
            return False  # not a channel concat
        keep_inputs, seen, keep_mask = [], set(), []
        for (src, _), tensor, width in zip(resolved, node.inputs, widths):
            duplicate = id(src) in seen
            seen.add(id(src))
            keep_mask.extend([not duplicate] * width)
            if not duplicate:
                keep_inputs.append(tensor)
        if len(keep_inputs) == len(node.inputs):
            return False
        edits = self._successor_edits(node.outputs[0], np.array(keep_mask))
        if edits is None:
            return False
        for consumer, index, axis, keep in edits:
            value = np.compress(keep, const_value(consumer.inputs[index]), axis=axis)
            set_const_input(consumer, index, value, consumer.inputs[index].name or consumer.name)
        node.inputs.clear()
        node.inputs.extend(keep_inputs)
        return True

    def _successor_edits(self, tensor: gs.Tensor, keep: np.ndarray) -> list | None:
        """Slices that remove positions ~KEEP of TENSOR's channel axis in every successor, or None."""
        a = self.analysis
        edits: list = []
        stack = [tensor]
        while stack:
            t = stack.pop()
            if id(t) in {id(o) for o in self.graph.outputs}:
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

    # -- output --------------------------------------------------------------------------------------
    def to_model(self, template: onnx.ModelProto, keep: set[str] | None = None) -> onnx.ModelProto:
        """Export: bypass pruned identities, clean up, toposort, keep TEMPLATE's metadata.

        Works on a copy, so the session can go on pruning (and patching through its identities) after.
        Tensors named in KEEP survive (behind an Identity if need be), e.g. layer boundaries for rescoring.
        """
        keep = keep or set()
        graph = self.graph.copy()
        identity_names = {node.name for node in self.graph.nodes if id(node) in self.identity_nodes}
        outputs = {id(t) for t in graph.outputs}
        for node in list(graph.nodes):
            if node.name not in identity_names or node.op != "Identity" or not node.outputs:
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if id(dst) in outputs or dst.name in keep:
                continue  # a graph output keeps its name; an Identity stays in front of it
            for consumer in list(dst.outputs):
                for k, t in enumerate(consumer.inputs):
                    if t is dst:
                        consumer.inputs[k] = src
            node.outputs.clear()
        graph.cleanup().toposort()
        model = gs.export_onnx(graph, do_type_check=False)
        model.ir_version = template.ir_version
        del model.opset_import[:]
        model.opset_import.extend(template.opset_import)
        model.producer_name = template.producer_name
        model.producer_version = template.producer_version
        model.metadata_props.extend(template.metadata_props)
        # Intermediate shapes changed: drop stale value_info, shape inference recomputes what it can.
        del model.graph.value_info[:]
        return model

