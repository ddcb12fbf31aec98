"""Channel dependency analysis (Eq. 3.2, DepGraph-style groups) over an ONNX graph.

Every channel that a transform produces gets a class id; ops that couple channels position by position
(element-wise ops, norms, residual adds, pooling, resizing) merge classes in a union-find, and Concat /
Split / provable Reshape-Transpose-Flatten carry them by index. A *dependency group* is then simply the
set of classes reachable from one tensor's channel axis, and width-pruning a set of classes means
slicing every *site* (weight axis, per-channel parameter, split size, shape entry) where they occur.

Classes that touch a graph input or output are *pinned* (their count must not change); classes that
pass through something the analysis cannot prove safe are *blocked*, with the reason.

This module walks the graph and dispatches each node to its rule (RULES, by op type); the data types
live in channel_analysis.py, the rules in channel_rules.py (classes) and channel_layout.py (layouts).
"""

from __future__ import annotations

import logging
from typing import Callable

import onnx_graphsurgeon as gs

from .channel_analysis import (AnalysisError, ChannelAnalysis, ChannelAxis, RuleContext, Site, TransformInfo,
                               UnionFind)
from .channel_layout import visit_gather, visit_pad, visit_reduce, visit_reshape, visit_slice, visit_transpose
from .channel_rules import (ELEMENTWISE_NARY, NO_PROPAGATION, REDUCE_OPS, RESHAPE_LIKE, UNARY_PASSTHROUGH,
                            transform_axis, visit_concat, visit_elementwise, visit_layernorm, visit_norm,
                            visit_split, visit_transform, visit_unary)
from .lift import transform_weight_index

__all__ = ["input_channel_axes", "ChannelAxis", "Site", "ChannelAnalysis", "analyze_channels", "AnalysisError",
           "UNARY_PASSTHROUGH", "TransformInfo", "UnionFind", "RULES"]

logger = logging.getLogger(__name__)

Rule = Callable[[RuleContext, gs.Node], None]


def _visit_param_norm(ctx: RuleContext, node: gs.Node) -> None:
    # BatchNorm / InstanceNorm: every input after the data (scale, bias, mean, var) is per channel.
    visit_norm(ctx, node, param_inputs=range(1, len(node.inputs)))


def _no_channels(ctx: RuleContext, node: gs.Node) -> None:
    pass  # Shape/Size read no channels; a Constant has no input


# The rule for each non-transform op (transforms are recognised by their weight, see visit_transform).
RULES: dict[str, Rule] = {
    **{op: visit_unary for op in UNARY_PASSTHROUGH},
    "BatchNormalization": _visit_param_norm, "InstanceNormalization": _visit_param_norm,
    **{op: visit_layernorm for op in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization")},
    **{op: visit_elementwise for op in ELEMENTWISE_NARY},
    "Concat": visit_concat, "Split": visit_split, "Slice": visit_slice, "Transpose": visit_transpose,
    **{op: visit_reshape for op in RESHAPE_LIKE},
    **{op: visit_reduce for op in REDUCE_OPS},
    "Gather": visit_gather,
    **{op: _no_channels for op in (*NO_PROPAGATION, "Constant")},
    "Pad": visit_pad,
}


def analyze_channels(graph: gs.Graph, shapes: dict[str, tuple], input_axes: dict[str, int] | None = None
                     ) -> ChannelAnalysis:
    """Build the channel classes, sites, pins and blocks for GRAPH (toposorted) with static SHAPES.

    INPUT_AXES gives the channel axis of graph inputs; by default it is read off the graph.
    """
    ctx = RuleContext(shapes)
    a = ctx.a
    hints = input_axes if input_axes is not None else _input_hints(ctx, graph)
    for tensor in graph.inputs:
        axis = hints.get(tensor.name)
        dims = ctx.dims(tensor)
        if axis is None or dims is None or dims[axis] is None:
            continue
        classes = a.uf.fresh(dims[axis])  # one class per channel on the input's channel axis
        for c in classes.tolist():
            a.pinned[c] = f"graph input {tensor.name!r}"
        ctx.set_axis(tensor, axis, classes)
    for node in graph.nodes:
        _visit(ctx, node)
    for tensor in graph.outputs:
        info = a.axes.get(tensor.name)
        if info is not None:
            for c in info.classes.tolist():
                a.pinned.setdefault(c, f"graph output {tensor.name!r}")
    return a


def input_channel_axes(graph: gs.Graph, shapes: dict[str, tuple]) -> dict[str, int]:
    """Channel axis of each graph input that feeds a transform (see _input_hints)."""
    return _input_hints(RuleContext(shapes), graph)


def _input_hints(ctx: RuleContext, graph: gs.Graph) -> dict[str, int]:
    """Channel axis of graph inputs, read off the first transform reached through unary ops."""
    hints: dict[str, int] = {}
    for tensor in graph.inputs:
        frontier, seen = [tensor], 0
        while frontier and seen < 16:
            t = frontier.pop()
            seen += 1
            for consumer in t.outputs:
                if transform_weight_index(consumer) is not None and consumer.inputs[0] is t:
                    rank = ctx.rank(tensor)
                    if rank is not None:
                        hints[tensor.name] = transform_axis(consumer, rank)
                    frontier = []
                    break
                if consumer.op in UNARY_PASSTHROUGH or consumer.op in (
                        "BatchNormalization", "Split", "Concat", "Add", "Mul", "Sub", "Div"):
                    frontier.extend(consumer.outputs)
    return hints


def _visit(ctx: RuleContext, node: gs.Node) -> None:
    """Apply NODE's rule, then block the channels of a tracked input that do not come out of it."""
    if transform_weight_index(node) is not None:
        visit_transform(ctx, node)
    else:
        rule = RULES.get(node.op)
        if rule is None:
            ctx.block_inputs(node, f"passes through unsupported op {node.op}")
        else:
            rule(ctx, node)
    a = ctx.a
    # Safety net: a tracked input whose channels do not come out the other side is only fine for
    # ops that consume channels whole (Shape, reductions over channels). Anything else is blocked.
    tracked_in = [a.axes[t.name] for t in node.inputs if t.name in a.axes]
    if tracked_in and node.op not in NO_PROPAGATION and not ctx.reduces_channels.pop(id(node), False):
        if node.outputs and not any(t.name in a.axes for t in node.outputs):
            for info in tracked_in:
                ctx.block(info.classes, f"channel tracking lost at {node.op} {node.name}")
