"""Prune(f) applied: the passes that edit a session's graph according to a plan.

ReplaceWithIdentity turns a trigger and its coupled ops into identities, ReconcileWidth slices the
constants a width change touches (and resizes Splits and shape entries), and PruneAttention removes an
attention region, with its KV-cache inputs and outputs. A plan names its pass by `plan.action`; PASSES
maps that name to the function, so no caller tells plans apart by their class.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..graph.channels import Site
from ..graph.consts import const_value, set_const_input
from .plan import Plan, StructuralPlan, UnitPlan

__all__ = ["EditableSession", "PASSES", "apply_plan", "prune_transform", "prune_attention", "prune_composite",
           "apply_masks", "record_output_channels", "record_weight_slices", "resize_split", "replace_with_identity"]


class EditableSession(Protocol):
    """What the passes need of a pruning session."""

    graph: gs.Graph
    opset: int
    identity_nodes: set[int]
    pruned: list[str]
    output_channels: dict
    weight_slices: dict
    removed_graph_io: list[str]

    def plan(self, unit_id: str) -> Plan: ...

    def apply(self, plan: Plan) -> None: ...

    def invalidate(self) -> None: ...

    def patch(self) -> int: ...


def prune_transform(session: EditableSession, plan: UnitPlan) -> None:
    """Prune(f) of one transform: slice reconciled widths, replace it and its coupled ops by identities."""
    record_output_channels(session.output_channels, plan.masks)
    record_weight_slices(session.weight_slices, plan.masks)
    apply_masks(plan.masks, session.opset)
    graph, identities = session.graph, session.identity_nodes
    trigger_nodes = [plan.node, *plan.extra_nodes]
    replace_with_identity(graph, identities, plan.node.inputs[0], trigger_nodes[-1].outputs[0], trigger_nodes)
    for op in plan.coupled:
        replace_with_identity(graph, identities, op.input, op.output, op.nodes)
    session.pruned.append(plan.unit_id)
    graph.cleanup()
    session.invalidate()
    session.patch()


def prune_composite(session: EditableSession, plan: StructuralPlan) -> None:
    """An MLP sub-layer or a whole block: its members, each re-planned on the graph as it is then."""
    for member in plan.members:
        member_plan = session.plan(member)
        if member_plan.reason is not None:
            raise UnsupportedModelError(f"{plan.unit_id}: member {member} cannot be pruned: "
                                        f"{member_plan.reason}")
        session.apply(member_plan)
    session.pruned.append(plan.unit_id)


def prune_attention(session: EditableSession, plan: StructuralPlan) -> None:
    """Algorithm 7: coupled ops and the whole attention region become identities.

    With a KV cache, the block's past key/value inputs and present outputs go with it.
    """
    graph = session.graph
    block = plan.layer.attention
    for op in plan.coupled:
        replace_with_identity(graph, session.identity_nodes, op.input, op.output, op.nodes)
    region_inputs = [t for n in block.region for t in n.inputs]
    graph_inputs = {id(t) for t in graph.inputs}
    produced = [t for n in block.region for t in n.outputs if t is not block.output]
    for node in block.region:
        node.outputs.clear()
    replace_with_identity(graph, session.identity_nodes, block.input, block.output, [])
    produced_ids = {id(t) for t in produced}
    session.removed_graph_io.extend(t.name for t in graph.outputs if id(t) in produced_ids)
    graph.outputs = [t for t in graph.outputs if id(t) not in produced_ids]
    graph.cleanup()
    for tensor in region_inputs:
        if id(tensor) not in graph_inputs or not tensor.name.startswith("past_key_values."):
            continue
        if tensor.outputs and all(c.op in ("Shape", "Size") for c in tensor.outputs):
            _read_past_length_elsewhere(graph, tensor)
        if not tensor.outputs:
            graph.inputs = [t for t in graph.inputs if t is not tensor]
            session.removed_graph_io.append(tensor.name)
    session.pruned.append(plan.unit_id)
    session.invalidate()
    session.patch()


def _read_past_length_elsewhere(graph: gs.Graph, past: gs.Tensor) -> None:
    """The exporter reads the past length off this layer's cache PAST: read it off another layer's."""
    kind = past.name.rsplit(".", 1)[-1]  # "key" or "value" in past_key_values.<layer>.<kind>
    survivor = next((t for t in graph.inputs if t is not past and t.name.startswith(
        "past_key_values.") and t.name.endswith("." + kind) and t.outputs), None)
    if survivor is not None:
        for reader in list(past.outputs):
            for k, t in enumerate(reader.inputs):
                if t is past:
                    reader.inputs[k] = survivor


# Pass by plan action (Plan.action).
PASSES: dict[str, Callable] = {"transform": prune_transform, "attention": prune_attention,
                               "composite": prune_composite}


def apply_plan(session: EditableSession, plan: Plan) -> None:
    """Run the pass that PLAN names on SESSION."""
    PASSES[plan.action](session, plan)


def record_output_channels(origins: dict, masks: dict) -> None:
    """Note which of its unpruned output channels each Conv keeps (compensation matches them to the unpruned
    model's): ORIGINS[node name] = the unpruned index of every output channel left, composed over steps."""
    for entry in masks.values():
        node, keep = entry["node"], entry["axes"].get(0)
        # Axis 0 of a Conv weight (input 1) is its output channels, in the order the output has them.
        if node.op != "Conv" or entry["index"] != 1 or keep is None:
            continue
        before = origins.get(node.name, np.arange(len(keep)))
        origins[node.name] = before[keep]


def record_weight_slices(origins: dict, masks: dict) -> None:
    """Note which unpruned rows and columns each MatMul weight keeps (a block-quantized one is sliced from its
    codes on export: `graph.nbits`): ORIGINS[node name][axis] = the unpruned index of every one left."""
    for entry in masks.values():
        node = entry["node"]
        if node.op != "MatMul" or entry["index"] != 1:
            continue
        kept = origins.setdefault(node.name, {})
        for axis, keep in entry["axes"].items():  # axis 0: input channels (K), 1: output channels (N)
            before = kept.get(axis, np.arange(len(keep)))
            kept[axis] = before[keep]


def apply_masks(masks: dict, opset: int) -> None:
    """ReconcileWidth: slice every constant of MASKS along its masked axes; resize Splits and shapes."""
    for entry in masks.values():
        node, index = entry["node"], entry["index"]
        value = const_value(node.inputs[index])
        for axis, keep in entry["axes"].items():
            value = np.compress(keep, value, axis=axis)  # keep the positions of AXIS where KEEP is True
        for site, keep in entry["sites"]:
            if site.kind == "split":
                resize_split(site, keep, opset)
            elif site.kind == "shape":
                value = value.copy()
                value[site.axis] = int(keep.sum())  # a shape entry (SITE.axis indexes the entries) = new width
        if entry["axes"] or any(s.kind == "shape" for s, _ in entry["sites"]):
            set_const_input(node, index, value, node.inputs[index].name or node.name)
        if node.op == "Conv" and index == 1 and int(node.attrs.get("group", 1)) > 1:
            # Depthwise conv: one group per channel, so the group count follows the kept channels.
            node.attrs["group"] = int(value.shape[0])


def resize_split(site: Site, keep: np.ndarray, opset: int) -> None:
    """Set a Split's sizes to the channels each output keeps (an input from opset 13, else the attribute)."""
    sizes, start = [], 0
    for part in site.classes_per_output:
        # KEEP is aligned with the Split input's channels; each output owns a consecutive range.
        sizes.append(int(keep[start:start + len(part)].sum()))
        start += len(part)
    node = site.node
    if opset >= 13:
        const = gs.Constant(f"{node.name}__split_od", np.array(sizes, dtype=np.int64))
        if len(node.inputs) > 1:
            node.inputs[1] = const
        else:
            node.inputs.append(const)
        node.attrs.pop("num_outputs", None)
    else:
        node.attrs["split"] = sizes


def replace_with_identity(graph: gs.Graph, identity_nodes: set[int], source: gs.Tensor, target: gs.Tensor,
                          nodes: list[gs.Node]) -> None:
    """ReplaceWithIdentity: NODES stop producing; an Identity SOURCE -> TARGET takes their place.

    The Identity's id joins IDENTITY_NODES, so that patching and export can tell it from the model's own.
    """
    for node in nodes:
        node.outputs.clear()
    name = f"{nodes[-1].name}__pruned" if nodes else f"{target.name}__pruned"
    identity = gs.Node("Identity", name=name, inputs=[source], outputs=[target])
    graph.nodes.append(identity)
    identity_nodes.add(id(identity))
