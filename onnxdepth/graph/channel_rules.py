"""Per-op channel rules that create, merge and carry channel classes (Eq. 3.2).

A transform creates classes for its outputs; element-wise ops and norms merge or keep them position by
position; Concat and Split carry them by index. Each rule reads its node's inputs' channel axes from
the RuleContext and records its outputs' (and every site it creates).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .channel_analysis import AnalysisError, ChannelAxis, RuleContext, Site, TransformInfo
from .consts import const_value
from .lift import transform_weight_index

__all__ = ["UNARY_PASSTHROUGH", "ELEMENTWISE_NARY", "NO_PROPAGATION", "REDUCE_OPS", "RESHAPE_LIKE",
           "transform_axis", "visit_transform", "visit_unary", "visit_norm", "visit_layernorm",
           "visit_elementwise", "visit_concat", "visit_split"]


UNARY_PASSTHROUGH = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Clip", "Identity", "Cast", "Dropout", "Erf", "Neg",
    "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf",
    "Softmax", "LogSoftmax", "Hardmax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "LpPool", "GlobalLpPool", "Upsample", "Resize", "Sin", "Cos", "LRN", "CastLike",
}
ELEMENTWISE_NARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
                    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu", "BitShift"}
NO_PROPAGATION = {"Shape", "Size"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}
RESHAPE_LIKE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def transform_axis(node: gs.Node, rank: int) -> int:
    """The channel axis (negative) of a transform's data input of rank RANK."""
    # Conv-like ops carry channels on axis 1 (N, C, spatial...); linear layers on the last axis.
    return 1 - rank if node.op in ("Conv", "ConvTranspose") else -1


def visit_transform(ctx: RuleContext, node: gs.Node) -> None:
    """A transform: fresh classes for its output channels (a depthwise conv keeps its input's), and sites
    on its weight and bias."""
    w_idx = transform_weight_index(node)
    weight = const_value(node.inputs[w_idx])
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x) or (weight.ndim if node.op in ("Conv", "ConvTranspose") else 2)
    axis = transform_axis(node, rank)
    group = int(node.attrs.get("group", 1))
    # Weight layouts: Conv [out, in/group, k...], ConvTranspose [in, out/group, k...],
    # MatMul [in, out], Gemm [out, in] with transB=1 else [in, out].
    if node.op == "Conv":
        n_in, n_out, in_axis, out_axis = weight.shape[1] * group, weight.shape[0], 1, 0
    elif node.op == "ConvTranspose":
        n_in, n_out, in_axis, out_axis = weight.shape[0], weight.shape[1] * group, 0, 1
    elif node.op == "Gemm" and node.attrs.get("transB", 0):
        n_in, n_out, in_axis, out_axis = weight.shape[1], weight.shape[0], 1, 0
    else:
        n_in, n_out, in_axis, out_axis = weight.shape[0], weight.shape[1], 0, 1
    info = ctx.a.axes.get(x.name)
    if info is None or info.axis != axis:
        in_classes = ctx.fresh_blocked(n_in, f"input of {node.name} has an unknown channel origin")
    else:
        in_classes = info.classes
        if len(in_classes) != n_in:
            raise AnalysisError(f"{node.name}: weight expects {n_in} input channels, input has {len(in_classes)}")
    kind = "dense"
    if group > 1 and group == n_in == n_out:
        kind = "depthwise"
        # Depthwise: channel c in -> channel c out; weight axis 0 and bias follow the input classes.
        out_classes = in_classes
        ctx.a.sites.append(Site("param", node, w_idx, 0, in_classes, owner=node))
    elif group > 1:
        kind = "grouped"
        ctx.block(in_classes, f"grouped convolution {node.name}")
        out_classes = ctx.fresh_blocked(n_out, f"grouped convolution {node.name}")
    else:
        out_classes = ctx.a.uf.fresh(n_out)
        ctx.a.sites.append(Site("weight_in", node, w_idx, in_axis, in_classes, owner=node))
        ctx.a.sites.append(Site("weight_out", node, w_idx, out_axis, out_classes, owner=node))
    bias_idx = 2 if len(node.inputs) > 2 else None
    if bias_idx is not None:
        bias = const_value(node.inputs[bias_idx])
        if bias is not None and bias.size > 1:
            # Bias is per output channel on its last axis (Conv: [out]; Gemm C: [out] or [1, out]).
            kind_b = "param" if kind == "depthwise" else "weight_out"
            ctx.a.sites.append(Site(kind_b, node, bias_idx, bias.ndim - 1, out_classes, owner=node))
        elif bias is None:
            ctx.block(out_classes, f"{node.name} has a computed bias")
    ctx.set_axis(y, axis, out_classes)
    ctx.a.transforms[node.name] = TransformInfo(node, w_idx, x, y, in_classes, out_classes, kind)


def visit_unary(ctx: RuleContext, node: gs.Node) -> None:
    """Channels pass through unchanged (activations, pooling, resizing); a Resize's sizes are a site."""
    info = ctx.a.axes.get(node.inputs[0].name) if node.inputs else None
    if info is None:
        return
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        sizes = const_value(node.inputs[3])
        rank = ctx.rank(node.inputs[0])
        if sizes is None or rank is None:
            ctx.block(info.classes, f"Resize {node.name} has computed output sizes")
        else:
            # The sizes entry of the channel axis: its index is the axis counted from the front.
            ctx.a.sites.append(Site("shape", node, 3, rank + info.axis, info.classes))
    if node.op in ("Softmax", "LogSoftmax", "Hardmax"):
        pass  # normalising over channels keeps shapes valid when channels are removed
    ctx.set_axis(node.outputs[0], info.axis, info.classes)


def visit_norm(ctx: RuleContext, node: gs.Node, param_inputs) -> None:
    """A per-channel norm (BatchNorm, InstanceNorm): channels pass through, PARAM_INPUTS are sites."""
    info = ctx.a.axes.get(node.inputs[0].name)
    if info is None:
        return
    for idx in param_inputs:
        value = const_value(node.inputs[idx])
        if value is None:
            ctx.block(info.classes, f"{node.op} {node.name} has computed parameters")
        elif value.size > 1:
            ctx.a.sites.append(Site("param", node, idx, 0, info.classes))  # a [C] vector: channels on axis 0
    ctx.set_axis(node.outputs[0], info.axis, info.classes)


def visit_layernorm(ctx: RuleContext, node: gs.Node) -> None:
    """LayerNorm-like ops: channels pass through; scale and bias are sites if they cover the channels."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    norm_axis = int(node.attrs.get("axis", -1))
    norm_axis = norm_axis + rank if norm_axis < 0 else norm_axis  # as a positive axis
    channel_pos = rank + info.axis  # the channel axis, as a positive axis
    if channel_pos >= norm_axis:
        for idx in range(1, len(node.inputs)):
            value = const_value(node.inputs[idx])
            if value is None:
                ctx.block(info.classes, f"{node.op} {node.name} has computed parameters")
            elif value.size > 1:
                # Scale/bias cover the normalised axes; the channel axis is at CHANNEL_POS - NORM_AXIS.
                ctx.a.sites.append(Site("param", node, idx, value.ndim + info.axis, info.classes))
    ctx.set_axis(node.outputs[0], info.axis, info.classes)


def visit_elementwise(ctx: RuleContext, node: gs.Node) -> None:
    """N-ary element-wise ops merge their operands' classes position by position; constants are sites."""
    tracked = [(i, ctx.a.axes[t.name]) for i, t in enumerate(node.inputs) if t.name in ctx.a.axes]
    if not tracked:
        return
    axis = tracked[0][1].axis
    size = max(info.size for _, info in tracked)
    base = next(info for _, info in tracked if info.size == size)
    if any(info.axis != axis for _, info in tracked):
        ctx.block_inputs(node, f"{node.op} {node.name} mixes channel axes")
        return
    for _, info in tracked:
        if info.size == size:
            ctx.a.uf.union(base.classes, info.classes)
        elif info.size == 1:
            ctx.block(info.classes, f"single channel broadcast in {node.name}")
        else:
            raise AnalysisError(f"{node.name}: channel sizes {info.size} and {size} do not broadcast")
    tracked_idx = {i for i, _ in tracked}
    for i, t in enumerate(node.inputs):
        if i in tracked_idx:
            continue
        value = const_value(t)
        dims = ctx.dims(t)
        if dims is None:
            if value is None:
                ctx.block(base.classes, f"{node.name} combines channels with a tensor of unknown shape")
            continue
        pos = len(dims) + axis  # channel position in this operand (numpy right-aligned broadcasting)
        if pos < 0 or dims[pos] == 1:
            continue
        if value is not None and value.shape[pos] == size:
            ctx.a.sites.append(Site("param", node, i, pos, base.classes))
        else:
            ctx.block(base.classes, f"{node.name} combines channels with an untracked tensor")
    if node.outputs:
        ctx.set_axis(node.outputs[0], axis, base.classes)


def visit_concat(ctx: RuleContext, node: gs.Node) -> None:
    """A Concat on the channel axis carries its inputs' classes in order; on another axis it is element-wise."""
    rank = ctx.rank(node.outputs[0])
    infos = [ctx.a.axes.get(t.name) for t in node.inputs]
    tracked = [i for i in infos if i is not None]
    if not tracked or rank is None:
        return
    axis = int(node.attrs.get("axis", 0))
    axis = axis - rank if axis >= 0 else axis  # as a negative axis
    ch_axis = tracked[0].axis
    if any(i.axis != ch_axis for i in tracked):
        ctx.block_inputs(node, f"Concat {node.name} mixes channel axes")
        return
    if axis == ch_axis:
        parts = []
        for t, info in zip(node.inputs, infos):
            if info is None:
                dims = ctx.dims(t)
                width = dims[len(dims) + ch_axis] if dims else None  # its size on the (negative) channel axis
                if width is None:
                    ctx.block_inputs(node, f"Concat {node.name} has an input of unknown width")
                    return
                info = ChannelAxis(ch_axis, ctx.fresh_blocked(width, f"untracked input to {node.name}"))
            parts.append(info.classes)
        ctx.set_axis(node.outputs[0], ch_axis, np.concatenate(parts))
    else:
        visit_elementwise(ctx, node)


def visit_split(ctx: RuleContext, node: gs.Node) -> None:
    """A Split on the channel axis hands each output its range of classes; its sizes are a site."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    axis = int(node.attrs.get("axis", 0))
    axis = axis - rank if axis >= 0 else axis  # as a negative axis, like ChannelAxis.axis
    if axis != info.axis:
        for out in node.outputs:
            ctx.set_axis(out, info.axis, info.classes)
        return
    sizes = None
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        sizes = None if value is None else [int(v) for v in value]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    else:
        n = len(node.outputs)
        if info.size % n == 0:
            sizes = [info.size // n] * n
    if sizes is None or sum(sizes) != info.size:
        ctx.block(info.classes, f"Split {node.name} has sizes that cannot be proven")
        return
    parts, start = [], 0
    for out, width in zip(node.outputs, sizes):
        parts.append(info.classes[start:start + width])  # each output owns a consecutive range
        ctx.set_axis(out, info.axis, parts[-1])
        start += width
    # The site's axis is the split axis counted from the front.
    ctx.a.sites.append(Site("split", node, 1, rank + axis, info.classes, classes_per_output=parts))
