"""Planning Prune(f) (pure): what pruning a unit removes, what it costs, its score, or why it can't.

Transformers: attention blocks (Algorithm 7), MLP transforms, and composite units (an MLP sub-layer or
a whole block). CNNs and every transform outside the layers: one transform with its coupled ops and the
channel choice that reconciles a width change (Eq. 3.10). Nothing here edits the graph.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import InvalidArgumentError
from ..graph.channels import ChannelAnalysis
from ..graph.consts import const_value
from ..graph.head import spatial_change
from ..graph.lift import Lifting, NodeClass
from ..graph.transformer import AttentionBlock, TransformerLayer
from ..param_importance import ParamImportance
from .channels import channel_masks, choose_channels, removed_params
from .plan import Plan, StructuralPlan, Unit, UnitPlan, unit_of
from .search import find_coupled_ops

__all__ = ["PlanningSession", "HEAD", "USER", "SPATIAL", "structural_ids", "plan_unit", "plan_transform",
           "plan_attention", "plan_composite", "unit_plans"]

# Exclusion reasons in the order they are checked (the first that applies is reported).
HEAD = "graph head"
USER = "user exclude"
SPATIAL = "changes spatial dims"


class PlanningSession(Protocol):
    """What planning reads of a pruning session (ANALYSIS and LIFTING are cached views of GRAPH)."""

    graph: gs.Graph
    shapes: dict[str, tuple]
    importance: ParamImportance
    exclude: re.Pattern | None
    detect_head: bool
    head_units: set[str]
    identity_nodes: set[int]
    pruned: list[str]
    layers: list[TransformerLayer]
    granularity: str
    search_space: str

    @property
    def analysis(self) -> ChannelAnalysis: ...

    @property
    def lifting(self) -> Lifting: ...


def structural_ids(layers: list[TransformerLayer], granularity: str) -> list[str]:
    """Ids of the transformer units at GRANULARITY, in layer order."""
    ids = []
    for layer in layers:
        prefix = f"layer{layer.index}"
        if granularity == "block":
            ids.append(f"{prefix}.block")
        else:
            ids.append(f"{prefix}.attention")
            if granularity == "sublayer":
                ids.append(f"{prefix}.mlp")
            else:
                ids.extend(f"{prefix}.{kind}" for kind in layer.mlp)
    return ids


def unit_plans(session: PlanningSession) -> list[tuple[Unit, Plan]]:
    """Every unit with its plan, the unit carrying the reason it is excluded, if any.

    Transformers: attention blocks and MLP sub-layer transforms (fine), attention + MLP (sublayer)
    or whole layers (block); transforms outside the layers are listed as plain layer units.
    """
    pairs: list[tuple[Unit, Plan]] = []
    analysis = session.analysis
    for unit_id in structural_ids(session.layers, session.granularity):
        if unit_id in session.pruned:
            continue
        plan = plan_unit(session, unit_id)
        pairs.append((unit_of(plan, plan.reason), plan))
    in_layers = {id(n) for layer in session.layers for n in [*layer.attention.projections, *layer.mlp.values()]}
    for name, info in analysis.transforms.items():
        if id(info.node) in session.identity_nodes or id(info.node) in in_layers:
            continue
        plan = plan_unit(session, name)
        reason = plan.reason
        if reason is None and session.search_space == "reduced" and plan.in_channels != plan.out_channels:
            reason = "reduced search space: changes channels"
        pairs.append((unit_of(plan, reason), plan))
    return pairs


def plan_unit(session: PlanningSession, unit_id: str) -> Plan:
    """Plan Prune(f) for UNIT_ID: a transformer unit ("layer<i>.<kind>") or a transform (its node name)."""
    if unit_id not in session.analysis.transforms and re.fullmatch(r"layer\d+\.\w+", unit_id) and session.layers:
        layer, kind = _layer(session.layers, unit_id)
        if kind in layer.mlp:
            plan = plan_transform(session, layer.mlp[kind].name)
            plan.unit_id = unit_id
            plan.kind = kind
            return plan
        if kind == "attention":
            return plan_attention(session, unit_id, layer)
        if kind in ("mlp", "block"):
            return plan_composite(session, unit_id, layer, kind)
        raise InvalidArgumentError(f"no unit named {unit_id!r}")
    return plan_transform(session, unit_id)


def _layer(layers: list[TransformerLayer], unit_id: str) -> tuple[TransformerLayer, str]:
    prefix, _, kind = unit_id.partition(".")
    try:
        return layers[int(prefix.removeprefix("layer"))], kind
    except (ValueError, IndexError) as exc:
        raise InvalidArgumentError(f"no unit named {unit_id!r}") from exc


def _width(analysis: ChannelAnalysis, tensor: gs.Tensor) -> int:
    info = analysis.axes.get(tensor.name)
    return len(info.classes) if info is not None else 0


def _score(importance: ParamImportance, nodes: list[gs.Node]) -> float:
    """Summed importance of each node's constant inputs after the first (weights and bias), in one sum."""
    return sum(float(importance(node, i, const_value(t)).sum())
               for node in nodes for i, t in enumerate(node.inputs) if i > 0 and const_value(t) is not None)


def plan_attention(session: PlanningSession, unit_id: str, layer: TransformerLayer) -> StructuralPlan:
    """Algorithm 7: activations coupled to O (T1), norms coupled to {Q, K, V} (T2), the whole region."""
    block = layer.attention
    width = _width(session.analysis, block.input)
    if any(n.outputs == [] for n in block.projections):
        return StructuralPlan(unit_id, "attention", layer, [], [], 0, 0.0, "already pruned", width, width)
    outputs = {id(t) for t in session.graph.outputs}
    acts = [op for op in find_coupled_ops(block.o, {id(block.o)}, session.lifting, outputs)
            if op.cls is NodeClass.ACTIVATION]
    norms = [op for op in find_coupled_ops(block.q, {id(block.q), id(block.k), id(block.v)}, session.lifting,
                                           outputs) if op.cls is NodeClass.NORM]
    nodes = list(block.region) + [n for op in acts + norms for n in op.nodes]
    params = region_params(nodes)
    score = _score(session.importance, block.projections)
    reason = USER if session.exclude is not None and session.exclude.search(unit_id) else None
    if reason is None and session.detect_head and _carries_past_length(session.graph, block):
        reason = "the last attention block with a KV cache carries the past length"
    return StructuralPlan(unit_id, "attention", layer, [], acts + norms, params, score, reason, width, width)


def _carries_past_length(graph: gs.Graph, block: AttentionBlock) -> bool:
    """True if a Shape outside BLOCK reads one of its past inputs and no other layer's cache is left."""
    region = {id(n) for n in block.region}
    pasts = [t for n in block.region for t in n.inputs if t.name.startswith("past_key_values.")
             and any(t is g for g in graph.inputs)]
    for past in pasts:
        outside = [c for c in past.outputs if id(c) not in region]
        if not outside:
            continue
        kind = past.name.rsplit(".", 1)[-1]  # "key" or "value" in past_key_values.<layer>.<kind>
        others = [t for t in graph.inputs if t is not past and t.name.startswith("past_key_values.")
                  and t.name.endswith("." + kind)]
        if not others:
            return True
    return False


def plan_composite(session: PlanningSession, unit_id: str, layer: TransformerLayer, kind: str
                   ) -> StructuralPlan:
    """An MLP sub-layer (KIND "mlp") or a whole block ("block"): its members still unpruned, summed."""
    prefix = f"layer{layer.index}"
    mlp_ids = [f"{prefix}.{k}" for k in ("mlp_gate", "mlp_up", "mlp_down", "mlp_0", "mlp_1") if k in layer.mlp]
    mlp_ids = [m for m in mlp_ids if m not in session.pruned]
    members = ([f"{prefix}.attention"] if kind == "block" and f"{prefix}.attention" not in session.pruned
               else []) + mlp_ids
    params, score, reason = 0, 0.0, None
    mlp_nodes = [layer.mlp[m.split(".", 1)[1]] for m in mlp_ids]
    for member in members:
        if member.endswith(".attention"):
            plan = plan_attention(session, member, layer)
            params += plan.params_removed
            score += plan.score
            reason = reason or plan.reason
    for node in mlp_nodes:
        params += sum(own_params(n) for n in [node, *bias_add(session.graph, node, 0, any_width=True)])
        score += _score(session.importance, [node])
    if mlp_nodes:
        # The post-attention norm goes with the whole MLP (FindNorm with T = its input transforms).
        first_inputs = {id(n) for n in mlp_nodes if n.inputs[0] is mlp_nodes[0].inputs[0]}
        outputs = {id(t) for t in session.graph.outputs}
        for op in find_coupled_ops(mlp_nodes[0], first_inputs, session.lifting, outputs):
            if op.cls is NodeClass.NORM:
                params += sum(own_params(n, all_inputs=True) for n in op.nodes)
    if session.exclude is not None and session.exclude.search(unit_id):
        reason = USER
    if not members:
        reason = "already pruned"
    width = _width(session.analysis, layer.attention.input)
    return StructuralPlan(unit_id, kind, layer, members, [], params, score, reason, width, width)


def plan_transform(session: PlanningSession, unit_id: str) -> UnitPlan:
    """Plan Prune(f) for a transform: channels to drop (lowest importance, Eq. 3.10), coupled ops, cost."""
    a = session.analysis
    if unit_id not in a.transforms:
        raise InvalidArgumentError(f"no unit named {unit_id!r}")
    info = a.transforms[unit_id]
    node = info.node
    n_in, n_out = len(info.in_classes), len(info.out_classes)
    bias = bias_add(session.graph, node, n_out)
    static_reason = _static_exclusion(session, node)
    coupled = find_coupled_ops(node, {id(node)}, session.lifting, {id(t) for t in session.graph.outputs})
    removed_nodes = {id(node)} | {id(n) for n in bias} | {id(n) for op in coupled for n in op.nodes}
    # A coupled op's parameters may sit on any input (a norm's Mul(weight, x) has it first).
    own = sum(own_params(n) for n in [node, *bias]) + sum(
        own_params(n, all_inputs=True) for op in coupled for n in op.nodes)
    if static_reason is not None:
        return UnitPlan(unit_id, node, np.zeros(0, dtype=np.int64), coupled, own, own, 0.0, static_reason,
                        extra_nodes=bias, in_channels=n_in, out_channels=n_out)
    own_score = _score(session.importance, [node])
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
                reason, removed_roots, extra_score = choose_channels(
                    a, pool, abs(n_out - n_in), removed_nodes, session.importance)
                if reason is None:
                    masks = channel_masks(a, removed_roots, removed_nodes)
                    extra_params = removed_params(masks)
    return UnitPlan(unit_id, node, removed_roots, coupled, own, own + extra_params, own_score + extra_score,
                    reason, masks, extra_nodes=bias, in_channels=n_in, out_channels=n_out)


def _static_exclusion(session: PlanningSession, node: gs.Node) -> str | None:
    if node.name in session.head_units:
        return HEAD
    if session.exclude is not None and session.exclude.search(node.name):
        return USER
    if spatial_change(node, session.shapes):
        return SPATIAL
    return None


def bias_add(graph: gs.Graph, node: gs.Node, n_out: int, any_width: bool = False) -> list[gs.Node]:
    """A MatMul's bias: the single following Add of a constant with N_OUT values on the last axis."""
    if node.op != "MatMul":
        return []
    out = node.outputs[0]
    if len(out.outputs) != 1 or id(out) in {id(t) for t in graph.outputs}:
        return []
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return []
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    value = const_value(other)
    # A bias vector: all its values on the last axis (shape [..., 1, n]), matched there against N_OUT.
    if value is None or value.ndim < 1 or value.size != value.shape[-1]:
        return []
    if not any_width and value.shape[-1] != n_out:
        return []
    return [add]


def region_params(nodes: list[gs.Node]) -> int:
    """Floating-point parameters that go with NODES: each constant they read once, unless a node outside them
    reads it too (rotary caches shared by every fused attention op, tied weights)."""
    members = {id(n) for n in nodes}
    seen: set[int] = set()
    total = 0
    for node in nodes:
        for tensor in node.inputs:
            value = const_value(tensor)
            if (value is None or id(tensor) in seen or value.ndim < 1
                    or not np.issubdtype(value.dtype, np.floating)):
                continue
            seen.add(id(tensor))
            if all(id(c) in members for c in tensor.outputs):
                total += value.size
    return total


def own_params(node: gs.Node, all_inputs: bool = False) -> int:
    """Floating-point parameters on NODE's inputs after the first (with ALL_INPUTS: on every input)."""
    total = 0
    for tensor in (node.inputs if all_inputs else node.inputs[1:]):
        value = const_value(tensor)
        if value is not None and value.ndim >= 1 and np.issubdtype(value.dtype, np.floating):
            total += value.size
    return total
