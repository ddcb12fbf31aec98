"""Per-op channel rules for layout ops: they keep the channels but may move, cut or index their axis.

Slice, Transpose, Reshape-like ops, reductions, Gather (incl. an embedding lookup) and Pad: each either
follows the channel axis to its place in the output or blocks the classes it cannot prove safe.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .channel_analysis import RuleContext, Site
from .consts import const_value

__all__ = ["visit_slice", "visit_transpose", "visit_reshape", "visit_reduce", "visit_gather", "visit_pad"]


def visit_slice(ctx: RuleContext, node: gs.Node) -> None:
    """A Slice keeps the channels unless it cuts the channel axis (then they are blocked)."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    starts = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    ends = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
    if starts is None or ends is None:
        ctx.block(info.classes, f"Slice {node.name} has computed bounds")
        return
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]  # as positive axes
    channel_pos = rank + info.axis  # the channel axis, as a positive axis
    if channel_pos in axes:
        k = axes.index(channel_pos)  # STARTS/ENDS/STEPS entry of the channel axis
        step = 1 if steps is None else int(steps[k])
        if not (int(starts[k]) == 0 and int(ends[k]) >= info.size and step == 1):
            ctx.block(info.classes, f"Slice {node.name} cuts the channel axis")
            return
    ctx.set_axis(node.outputs[0], info.axis, info.classes)


def visit_transpose(ctx: RuleContext, node: gs.Node) -> None:
    """A Transpose moves the channel axis where its permutation sends it."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    perm = list(node.attrs.get("perm", list(reversed(range(rank)))))  # default: reverse every axis
    # The channel axis moves to wherever PERM places the input's channel position.
    out_pos = perm.index(rank + info.axis)
    ctx.set_axis(node.outputs[0], out_pos - rank, info.classes)  # back to a negative axis


def visit_reshape(ctx: RuleContext, node: gs.Node) -> None:
    """Reshape-like ops keep the channels if the channel axis survives whole (found by element counts)."""
    info = ctx.a.axes.get(node.inputs[0].name)
    if info is None:
        return
    in_dims, out_dims = ctx.dims(node.inputs[0]), ctx.dims(node.outputs[0])
    reason = f"{node.op} {node.name} merges or splits the channel axis"
    if node.op == "Reshape" and const_value(node.inputs[1]) is None and _keeps_last_axis(ctx, node, info):
        ctx.set_axis(node.outputs[0], -1, info.classes)  # the channels stay the last axis
        return
    if in_dims is None or out_dims is None or None in in_dims or None in out_dims:
        ctx.block(info.classes, f"{node.op} {node.name} has shapes that cannot be proven")
        return
    p = len(in_dims) + info.axis  # the input's channel axis, as a positive axis
    # Element counts before and after the channel axis.
    prefix, suffix = int(np.prod(in_dims[:p])), int(np.prod(in_dims[p + 1:]))
    # Find the output axis Q with the same leading and trailing element counts around the channels.
    match = None
    for q in range(len(out_dims)):
        if (int(np.prod(out_dims[:q])) == prefix and out_dims[q] == in_dims[p]
                and int(np.prod(out_dims[q + 1:])) == suffix):
            match = q
            break
    if match is None:
        ctx.block(info.classes, reason)
        return
    if node.op == "Reshape":
        shape = const_value(node.inputs[1])
        if shape is None:
            ctx.block(info.classes, f"Reshape {node.name} has a computed shape")
            return
        entry = int(shape[match])  # the shape entry of the output's channel axis
        if entry == 0 and match != p:  # 0 copies the input's dim at the same index: only right if it is P
            ctx.block(info.classes, reason)
            return
        if entry > 0:
            ctx.a.sites.append(Site("shape", node, 1, match, info.classes))
    ctx.set_axis(node.outputs[0], match - len(out_dims), info.classes)  # as a negative axis


def _shape_entry(tensor: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """(T, i) when TENSOR is one entry of T's runtime shape: Unsqueeze(Gather(Shape(T), i)) or
    Unsqueeze(Squeeze(Slice(Shape(T), i, i + 1 or past the end))); None for anything else."""
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or node.op != "Unsqueeze":
        return None
    inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    if inner is not None and inner.op == "Squeeze":
        inner = inner.inputs[0].inputs[0] if inner.inputs[0].inputs else None
        if inner is None or inner.op != "Slice" or len(inner.inputs) < 3:
            return None
        start = const_value(inner.inputs[1])
        index = None if start is None or start.size != 1 else int(start.ravel()[0])
    elif inner is not None and inner.op == "Gather":
        value = const_value(inner.inputs[1])
        index = None if value is None or value.size != 1 else int(value.ravel()[0])
    else:
        return None
    shape = inner.inputs[0].inputs[0] if inner.inputs[0].inputs else None
    if index is None or shape is None or shape.op != "Shape" or shape.attrs.get("start") or shape.attrs.get("end"):
        return None
    return shape.inputs[0], index


def _keeps_last_axis(ctx: RuleContext, node: gs.Node, info) -> bool:
    """True for a Reshape of a tensor whose channels are its last axis to a shape computed as a Concat whose
    last entry is the channel count (a constant, recorded as a site, or the input's own last dim at run time)
    and whose other entries never read the input's last dim: the flatten / unflatten around a Conv1D-style
    Gemm (GPT-2's `x.view(-1, x.size(-1))` and `x.view(*leading, nf)`)."""
    concat = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
    rank = ctx.rank(node.inputs[0])
    if info.axis != -1 or concat is None or concat.op != "Concat" or rank is None or not concat.inputs:
        return False
    *leading, last = concat.inputs
    for entry in leading:  # a constant, or a leading dim of some tensor's shape (never the input's last dim)
        if const_value(entry) is not None:
            continue
        found = _shape_entry(entry)
        if found is None or (found[0] is node.inputs[0] and found[1] % rank == rank - 1):
            return False
    value = const_value(last)
    if value is not None:
        if value.size != 1 or int(value.ravel()[0]) != info.size:
            return False
        ctx.a.sites.append(Site("shape", concat, len(concat.inputs) - 1, 0, info.classes))
        return True
    found = _shape_entry(last)
    return found is not None and found[0] is node.inputs[0] and found[1] % rank == rank - 1


def visit_reduce(ctx: RuleContext, node: gs.Node) -> None:
    """A reduction keeps the channels on its output unless it reduces over them (then they end there)."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    if node.op in ("ArgMax", "ArgMin"):
        axes = [int(node.attrs.get("axis", 0))]
    elif "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        if value is None:
            ctx.block(info.classes, f"{node.op} {node.name} has computed axes")
            return
        axes = [int(v) for v in value]
    else:
        axes = list(range(rank))
    axes = [a % rank for a in axes]  # as positive axes
    channel_pos = rank + info.axis  # the channel axis, as a positive axis
    if channel_pos in axes:
        # Reduces over channels: fine for any channel count, the output has no channel axis.
        ctx.reduces_channels[id(node)] = True
        return
    keepdims = int(node.attrs.get("keepdims", 1))
    # Without keepdims, every reduced axis before the channel axis removes one position in front of it.
    out_pos = channel_pos if keepdims else channel_pos - sum(1 for a in axes if a < channel_pos)
    out_rank = rank if keepdims else rank - len(axes)
    ctx.set_axis(node.outputs[0], out_pos - out_rank, info.classes)


def visit_gather(ctx: RuleContext, node: gs.Node) -> None:
    """An embedding lookup creates the width's classes; another Gather keeps them unless it indexes them."""
    table = const_value(node.inputs[0])
    if table is not None and table.ndim == 2 and int(node.attrs.get("axis", 0)) == 0 \
            and np.issubdtype(table.dtype, np.floating):
        # Embedding lookup: rows of a [vocab, width] table; the width is the output's last axis.
        classes = ctx.a.uf.fresh(table.shape[1])
        ctx.a.sites.append(Site("param", node, 0, 1, classes))  # the table's axis 1 is the width
        ctx.set_axis(node.outputs[0], -1, classes)
        return
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    idx_rank = ctx.rank(node.inputs[1])
    if info is None or rank is None or idx_rank is None:
        if info is not None:
            ctx.block(info.classes, f"Gather {node.name} with unknown ranks")
        return
    axis = int(node.attrs.get("axis", 0)) % rank  # as a positive axis
    channel_pos = rank + info.axis  # the channel axis, as a positive axis
    if axis == channel_pos:
        ctx.block(info.classes, f"Gather {node.name} indexes the channel axis")
        return
    # Gather replaces axis AXIS by the index dims: positions after it shift by idx_rank - 1.
    out_pos = channel_pos if channel_pos < axis else channel_pos + idx_rank - 1
    out_rank = rank + idx_rank - 1
    ctx.set_axis(node.outputs[0], out_pos - out_rank, info.classes)  # as a negative axis


def visit_pad(ctx: RuleContext, node: gs.Node) -> None:
    """A Pad keeps the channels unless it pads the channel axis (then they are blocked)."""
    info = ctx.a.axes.get(node.inputs[0].name)
    rank = ctx.rank(node.inputs[0])
    if info is None or rank is None:
        return
    pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        pads = node.attrs.get("pads")
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if pads is None:
        ctx.block(info.classes, f"Pad {node.name} has computed pads")
        return
    pads = [int(p) for p in np.asarray(pads).ravel()]
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]  # as positive axes
    channel_pos = rank + info.axis  # the channel axis, as a positive axis
    n = len(axes)
    if channel_pos in axes:
        k = axes.index(channel_pos)  # PADS is [begins of AXES..., ends of AXES...]: entries K and K + N
        if pads[k] != 0 or pads[k + n] != 0:
            ctx.block(info.classes, f"Pad {node.name} pads the channel axis")
            return
    ctx.set_axis(node.outputs[0], info.axis, info.classes)
