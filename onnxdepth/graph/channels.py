"""Channel dependency analysis (Eq. 3.2, DepGraph-style groups) over an ONNX graph.

Every channel that a transform produces gets a class id; ops that couple channels position by position
(element-wise ops, norms, residual adds, pooling, resizing) merge classes in a union-find, and Concat /
Split / provable Reshape-Transpose-Flatten carry them by index. A *dependency group* is then simply the
set of classes reachable from one tensor's channel axis, and width-pruning a set of classes means
slicing every *site* (weight axis, per-channel parameter, split size, shape entry) where they occur.

Classes that touch a graph input or output are *pinned* (their count must not change); classes that
pass through something the analysis cannot prove safe are *blocked*, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .consts import const_value
from .lift import transform_weight_index

__all__ = ["input_channel_axes", "ChannelAxis", "Site", "ChannelAnalysis", "analyze_channels", "AnalysisError", "UNARY_PASSTHROUGH"]

logger = logging.getLogger(__name__)


class AnalysisError(Exception):
    """The graph's channel sizes are inconsistent (a bug in a rewrite, or a malformed model)."""


class UnionFind:
    def __init__(self) -> None:
        self.parent = np.zeros(0, dtype=np.int64)

    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(start, start + count, dtype=np.int64)])
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        roots = np.asarray(ids, dtype=np.int64).copy()
        # Vectorised pointer jumping until every id points at a root.
        while True:
            parents = self.parent[roots]
            if np.array_equal(parents, roots):
                return roots
            roots = parents

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(self.find(a).tolist(), self.find(b).tolist()):
            if x != y:
                # Path halving keeps trees shallow enough for the vectorised find above.
                rx, ry = self._root(x), self._root(y)
                if rx != ry:
                    self.parent[max(rx, ry)] = min(rx, ry)

    def _root(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = int(self.parent[x])
        return x


@dataclass
class ChannelAxis:
    """The channel axis of one tensor: AXIS counted from the end (-1 = last), one class per channel."""

    axis: int
    classes: np.ndarray

    @property
    def size(self) -> int:
        return len(self.classes)


@dataclass(eq=False)
class Site:
    """A place where channels live in a constant and must be sliced when they are pruned.

    kind: "weight_in" / "weight_out" (a transform's weight or bias), "param" (per-channel constant of an
    element-wise op or norm), "split" (a Split's sizes; CLASSES_PER_OUTPUT holds each output's classes),
    "shape" (a Reshape/Resize shape entry that equals the channel count; AXIS is the entry index).
    """

    kind: str
    node: gs.Node
    input_index: int
    axis: int
    classes: np.ndarray
    owner: gs.Node | None = None
    classes_per_output: list[np.ndarray] | None = None


@dataclass
class TransformInfo:
    node: gs.Node
    weight_index: int
    data_in: gs.Tensor
    data_out: gs.Tensor
    in_classes: np.ndarray
    out_classes: np.ndarray
    kind: str  # "dense" | "depthwise" | "grouped"


@dataclass
class ChannelAnalysis:
    uf: UnionFind
    axes: dict[str, ChannelAxis] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)
    transforms: dict[str, TransformInfo] = field(default_factory=dict)
    pinned: dict[int, str] = field(default_factory=dict)
    blocked: dict[int, str] = field(default_factory=dict)

    _cache: dict = field(default_factory=dict)

    def roots(self, classes: np.ndarray) -> np.ndarray:
        return self.uf.find(classes)

    def tensor_roots(self, name: str) -> np.ndarray:
        """Channel roots of tensor NAME (cached: the analysis is immutable once built)."""
        key = ("t", name)
        if key not in self._cache:
            self._cache[key] = self.uf.find(self.axes[name].classes)
        return self._cache[key]

    def site_roots(self, site: Site) -> np.ndarray:
        key = ("s", id(site))
        if key not in self._cache:
            self._cache[key] = self.uf.find(site.classes)
        return self._cache[key]

    def lookup(self, roots) -> np.ndarray:
        """A boolean table over class ids that is True at ROOTS (for fast membership tests)."""
        table = np.zeros(len(self.uf.parent), dtype=bool)
        table[np.asarray(list(roots), dtype=np.int64)] = True
        return table

    def pinned_roots(self) -> dict[int, str]:
        if "pinned" not in self._cache:
            self._cache["pinned"] = _rooted(self.uf, self.pinned)
        return self._cache["pinned"]

    def blocked_roots(self) -> dict[int, str]:
        if "blocked" not in self._cache:
            self._cache["blocked"] = _rooted(self.uf, self.blocked)
        return self._cache["blocked"]


def _rooted(uf: UnionFind, raw: dict[int, str]) -> dict[int, str]:
    if not raw:
        return {}
    ids = np.fromiter(raw.keys(), dtype=np.int64)
    out: dict[int, str] = {}
    for raw_id, root in zip(ids.tolist(), uf.find(ids).tolist()):
        out.setdefault(root, raw[raw_id])
    return out


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


class _Builder:
    def __init__(self, graph: gs.Graph, shapes: dict[str, tuple], input_axes: dict[str, int] | None = None):
        self.input_axes = input_axes
        self._reduces_channels: dict[int, bool] = {}
        self.graph = graph
        self.shapes = shapes
        self.a = ChannelAnalysis(uf=UnionFind())

    # -- helpers -----------------------------------------------------------------------------------
    def rank(self, tensor: gs.Tensor) -> int | None:
        if isinstance(tensor, gs.Constant):
            return tensor.values.ndim
        shape = self.shapes.get(tensor.name)
        if shape is not None:
            return len(shape)
        if tensor.shape is not None:
            return len(tensor.shape)
        return None

    def dims(self, tensor: gs.Tensor) -> tuple | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        shape = self.shapes.get(tensor.name)
        if shape is None and tensor.shape is not None:
            shape = tuple(d if isinstance(d, int) else None for d in tensor.shape)
        return shape

    def block(self, classes: np.ndarray, reason: str) -> None:
        for c in np.asarray(classes).tolist():
            self.a.blocked.setdefault(c, reason)

    def block_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            info = self.a.axes.get(t.name)
            if info is not None:
                self.block(info.classes, reason)

    def set_axis(self, tensor: gs.Tensor, axis: int, classes: np.ndarray) -> None:
        self.a.axes[tensor.name] = ChannelAxis(axis, classes)

    def fresh_blocked(self, count: int, reason: str) -> np.ndarray:
        classes = self.a.uf.fresh(count)
        self.block(classes, reason)
        return classes

    # -- main ----------------------------------------------------------------------------------------
    def run(self) -> ChannelAnalysis:
        hints = self.input_axes if self.input_axes is not None else self.input_hints()
        for tensor in self.graph.inputs:
            axis = hints.get(tensor.name)
            dims = self.dims(tensor)
            if axis is None or dims is None or dims[axis] is None:
                continue
            classes = self.a.uf.fresh(dims[axis])
            for c in classes.tolist():
                self.a.pinned[c] = f"graph input {tensor.name!r}"
            self.set_axis(tensor, axis, classes)
        for node in self.graph.nodes:
            self.visit(node)
        for tensor in self.graph.outputs:
            info = self.a.axes.get(tensor.name)
            if info is not None:
                for c in info.classes.tolist():
                    self.a.pinned.setdefault(c, f"graph output {tensor.name!r}")
        return self.a

    def input_hints(self) -> dict[str, int]:
        """Channel axis of graph inputs, read off the first transform reached through unary ops."""
        hints: dict[str, int] = {}
        for tensor in self.graph.inputs:
            frontier, seen = [tensor], 0
            while frontier and seen < 16:
                t = frontier.pop()
                seen += 1
                for consumer in t.outputs:
                    if transform_weight_index(consumer) is not None and consumer.inputs[0] is t:
                        rank = self.rank(tensor)
                        if rank is not None:
                            hints[tensor.name] = self._transform_axis(consumer, rank)
                        frontier = []
                        break
                    if consumer.op in UNARY_PASSTHROUGH or consumer.op in (
                            "BatchNormalization", "Split", "Concat", "Add", "Mul", "Sub", "Div"):
                        frontier.extend(consumer.outputs)
        return hints

    @staticmethod
    def _transform_axis(node: gs.Node, rank: int) -> int:
        # Conv-like ops carry channels on axis 1 (N, C, spatial...); linear layers on the last axis.
        return 1 - rank if node.op in ("Conv", "ConvTranspose") else -1

    def visit(self, node: gs.Node) -> None:
        self._visit(node)
        # Safety net: a tracked input whose channels do not come out the other side is only fine for
        # ops that consume channels whole (Shape, reductions over channels). Anything else is blocked.
        tracked_in = [self.a.axes[t.name] for t in node.inputs if t.name in self.a.axes]
        if tracked_in and node.op not in NO_PROPAGATION and not self._reduces_channels.pop(id(node), False):
            if node.outputs and not any(t.name in self.a.axes for t in node.outputs):
                for info in tracked_in:
                    self.block(info.classes, f"channel tracking lost at {node.op} {node.name}")

    def _visit(self, node: gs.Node) -> None:
        op = node.op
        if transform_weight_index(node) is not None:
            self.visit_transform(node)
        elif op in UNARY_PASSTHROUGH:
            self.visit_unary(node)
        elif op in ("BatchNormalization", "InstanceNormalization"):
            self.visit_norm(node, param_inputs=range(1, len(node.inputs)))
        elif op in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"):
            self.visit_layernorm(node)
        elif op in ELEMENTWISE_NARY:
            self.visit_elementwise(node)
        elif op == "Concat":
            self.visit_concat(node)
        elif op == "Split":
            self.visit_split(node)
        elif op == "Slice":
            self.visit_slice(node)
        elif op == "Transpose":
            self.visit_transpose(node)
        elif op in RESHAPE_LIKE:
            self.visit_reshape(node)
        elif op in REDUCE_OPS:
            self.visit_reduce(node)
        elif op == "Gather":
            self.visit_gather(node)
        elif op in NO_PROPAGATION or op == "Constant":
            pass
        elif op == "Pad":
            self.visit_pad(node)
        else:
            self.block_inputs(node, f"passes through unsupported op {op}")

    def visit_transform(self, node: gs.Node) -> None:
        w_idx = transform_weight_index(node)
        weight = const_value(node.inputs[w_idx])
        x, y = node.inputs[0], node.outputs[0]
        rank = self.rank(x) or (weight.ndim if node.op in ("Conv", "ConvTranspose") else 2)
        axis = self._transform_axis(node, rank)
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
        info = self.a.axes.get(x.name)
        if info is None or info.axis != axis:
            in_classes = self.fresh_blocked(n_in, f"input of {node.name} has an unknown channel origin")
        else:
            in_classes = info.classes
            if len(in_classes) != n_in:
                raise AnalysisError(f"{node.name}: weight expects {n_in} input channels, input has {len(in_classes)}")
        kind = "dense"
        if group > 1 and group == n_in == n_out:
            kind = "depthwise"
            # Depthwise: channel c in -> channel c out; weight axis 0 and bias follow the input classes.
            out_classes = in_classes
            self.a.sites.append(Site("param", node, w_idx, 0, in_classes, owner=node))
        elif group > 1:
            kind = "grouped"
            self.block(in_classes, f"grouped convolution {node.name}")
            out_classes = self.fresh_blocked(n_out, f"grouped convolution {node.name}")
        else:
            out_classes = self.a.uf.fresh(n_out)
            self.a.sites.append(Site("weight_in", node, w_idx, in_axis, in_classes, owner=node))
            self.a.sites.append(Site("weight_out", node, w_idx, out_axis, out_classes, owner=node))
        bias_idx = 2 if len(node.inputs) > 2 else None
        if bias_idx is not None:
            bias = const_value(node.inputs[bias_idx])
            if bias is not None and bias.size > 1:
                # Bias is per output channel on its last axis (Conv: [out]; Gemm C: [out] or [1, out]).
                kind_b = "param" if kind == "depthwise" else "weight_out"
                self.a.sites.append(Site(kind_b, node, bias_idx, bias.ndim - 1, out_classes, owner=node))
            elif bias is None:
                self.block(out_classes, f"{node.name} has a computed bias")
        self.set_axis(y, axis, out_classes)
        self.a.transforms[node.name] = TransformInfo(node, w_idx, x, y, in_classes, out_classes, kind)

    def visit_unary(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name) if node.inputs else None
        if info is None:
            return
        if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
            sizes = const_value(node.inputs[3])
            rank = self.rank(node.inputs[0])
            if sizes is None or rank is None:
                self.block(info.classes, f"Resize {node.name} has computed output sizes")
            else:
                self.a.sites.append(Site("shape", node, 3, rank + info.axis, info.classes))
        if node.op in ("Softmax", "LogSoftmax", "Hardmax"):
            pass  # normalising over channels keeps shapes valid when channels are removed
        self.set_axis(node.outputs[0], info.axis, info.classes)

    def visit_norm(self, node: gs.Node, param_inputs) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        if info is None:
            return
        for idx in param_inputs:
            value = const_value(node.inputs[idx])
            if value is None:
                self.block(info.classes, f"{node.op} {node.name} has computed parameters")
            elif value.size > 1:
                self.a.sites.append(Site("param", node, idx, 0, info.classes))
        self.set_axis(node.outputs[0], info.axis, info.classes)

    def visit_layernorm(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        norm_axis = int(node.attrs.get("axis", -1))
        norm_axis = norm_axis + rank if norm_axis < 0 else norm_axis
        channel_pos = rank + info.axis
        if channel_pos >= norm_axis:
            for idx in range(1, len(node.inputs)):
                value = const_value(node.inputs[idx])
                if value is None:
                    self.block(info.classes, f"{node.op} {node.name} has computed parameters")
                elif value.size > 1:
                    # Scale/bias cover the normalised axes; the channel axis is at CHANNEL_POS - NORM_AXIS.
                    self.a.sites.append(Site("param", node, idx, value.ndim + info.axis, info.classes))
        self.set_axis(node.outputs[0], info.axis, info.classes)

    def visit_elementwise(self, node: gs.Node) -> None:
        tracked = [(i, self.a.axes[t.name]) for i, t in enumerate(node.inputs) if t.name in self.a.axes]
        if not tracked:
            return
        axis = tracked[0][1].axis
        size = max(info.size for _, info in tracked)
        base = next(info for _, info in tracked if info.size == size)
        if any(info.axis != axis for _, info in tracked):
            self.block_inputs(node, f"{node.op} {node.name} mixes channel axes")
            return
        for _, info in tracked:
            if info.size == size:
                self.a.uf.union(base.classes, info.classes)
            elif info.size == 1:
                self.block(info.classes, f"single channel broadcast in {node.name}")
            else:
                raise AnalysisError(f"{node.name}: channel sizes {info.size} and {size} do not broadcast")
        tracked_idx = {i for i, _ in tracked}
        for i, t in enumerate(node.inputs):
            if i in tracked_idx:
                continue
            value = const_value(t)
            dims = self.dims(t)
            if dims is None:
                if value is None:
                    self.block(base.classes, f"{node.name} combines channels with a tensor of unknown shape")
                continue
            pos = len(dims) + axis  # channel position in this operand (numpy right-aligned broadcasting)
            if pos < 0 or dims[pos] == 1:
                continue
            if value is not None and value.shape[pos] == size:
                self.a.sites.append(Site("param", node, i, pos, base.classes))
            else:
                self.block(base.classes, f"{node.name} combines channels with an untracked tensor")
        if node.outputs:
            self.set_axis(node.outputs[0], axis, base.classes)

    def visit_concat(self, node: gs.Node) -> None:
        rank = self.rank(node.outputs[0])
        infos = [self.a.axes.get(t.name) for t in node.inputs]
        tracked = [i for i in infos if i is not None]
        if not tracked or rank is None:
            return
        axis = int(node.attrs.get("axis", 0))
        axis = axis - rank if axis >= 0 else axis  # as a negative axis
        ch_axis = tracked[0].axis
        if any(i.axis != ch_axis for i in tracked):
            self.block_inputs(node, f"Concat {node.name} mixes channel axes")
            return
        if axis == ch_axis:
            parts = []
            for t, info in zip(node.inputs, infos):
                if info is None:
                    dims = self.dims(t)
                    width = dims[len(dims) + ch_axis] if dims else None
                    if width is None:
                        self.block_inputs(node, f"Concat {node.name} has an input of unknown width")
                        return
                    info = ChannelAxis(ch_axis, self.fresh_blocked(width, f"untracked input to {node.name}"))
                parts.append(info.classes)
            self.set_axis(node.outputs[0], ch_axis, np.concatenate(parts))
        else:
            self.visit_elementwise(node)

    def visit_split(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        axis = int(node.attrs.get("axis", 0))
        axis = axis - rank if axis >= 0 else axis
        if axis != info.axis:
            for out in node.outputs:
                self.set_axis(out, info.axis, info.classes)
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
            self.block(info.classes, f"Split {node.name} has sizes that cannot be proven")
            return
        parts, start = [], 0
        for out, width in zip(node.outputs, sizes):
            parts.append(info.classes[start:start + width])
            self.set_axis(out, info.axis, parts[-1])
            start += width
        self.a.sites.append(Site("split", node, 1, rank + axis, info.classes, classes_per_output=parts))

    def visit_slice(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        starts = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        ends = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
        axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
        if starts is None or ends is None:
            self.block(info.classes, f"Slice {node.name} has computed bounds")
            return
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
        channel_pos = rank + info.axis
        if channel_pos in axes:
            k = axes.index(channel_pos)
            step = 1 if steps is None else int(steps[k])
            if not (int(starts[k]) == 0 and int(ends[k]) >= info.size and step == 1):
                self.block(info.classes, f"Slice {node.name} cuts the channel axis")
                return
        self.set_axis(node.outputs[0], info.axis, info.classes)

    def visit_transpose(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        perm = list(node.attrs.get("perm", list(reversed(range(rank)))))
        # The channel axis moves to wherever PERM places the input's channel position.
        out_pos = perm.index(rank + info.axis)
        self.set_axis(node.outputs[0], out_pos - rank, info.classes)

    def visit_reshape(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        if info is None:
            return
        in_dims, out_dims = self.dims(node.inputs[0]), self.dims(node.outputs[0])
        reason = f"{node.op} {node.name} merges or splits the channel axis"
        if in_dims is None or out_dims is None or None in in_dims or None in out_dims:
            self.block(info.classes, f"{node.op} {node.name} has shapes that cannot be proven")
            return
        p = len(in_dims) + info.axis
        prefix, suffix = int(np.prod(in_dims[:p])), int(np.prod(in_dims[p + 1:]))
        # Find the output axis Q with the same leading and trailing element counts around the channels.
        match = None
        for q in range(len(out_dims)):
            if (int(np.prod(out_dims[:q])) == prefix and out_dims[q] == in_dims[p]
                    and int(np.prod(out_dims[q + 1:])) == suffix):
                match = q
                break
        if match is None:
            self.block(info.classes, reason)
            return
        if node.op == "Reshape":
            shape = const_value(node.inputs[1])
            if shape is None:
                self.block(info.classes, f"Reshape {node.name} has a computed shape")
                return
            entry = int(shape[match])
            if entry == 0 and match != p:
                self.block(info.classes, reason)
                return
            if entry > 0:
                self.a.sites.append(Site("shape", node, 1, match, info.classes))
        self.set_axis(node.outputs[0], match - len(out_dims), info.classes)

    def visit_reduce(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        if node.op in ("ArgMax", "ArgMin"):
            axes = [int(node.attrs.get("axis", 0))]
        elif "axes" in node.attrs:
            axes = list(node.attrs["axes"])
        elif len(node.inputs) > 1 and node.inputs[1].name:
            value = const_value(node.inputs[1])
            if value is None:
                self.block(info.classes, f"{node.op} {node.name} has computed axes")
                return
            axes = [int(v) for v in value]
        else:
            axes = list(range(rank))
        axes = [a % rank for a in axes]
        channel_pos = rank + info.axis
        if channel_pos in axes:
            # Reduces over channels: fine for any channel count, the output has no channel axis.
            self._reduces_channels[id(node)] = True
            return
        keepdims = int(node.attrs.get("keepdims", 1))
        out_pos = channel_pos if keepdims else channel_pos - sum(1 for a in axes if a < channel_pos)
        out_rank = rank if keepdims else rank - len(axes)
        self.set_axis(node.outputs[0], out_pos - out_rank, info.classes)

    def visit_gather(self, node: gs.Node) -> None:
        table = const_value(node.inputs[0])
        if table is not None and table.ndim == 2 and int(node.attrs.get("axis", 0)) == 0 \
                and np.issubdtype(table.dtype, np.floating):
            # Embedding lookup: rows of a [vocab, width] table; the width is the output's last axis.
            classes = self.a.uf.fresh(table.shape[1])
            self.a.sites.append(Site("param", node, 0, 1, classes))
            self.set_axis(node.outputs[0], -1, classes)
            return
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        idx_rank = self.rank(node.inputs[1])
        if info is None or rank is None or idx_rank is None:
            if info is not None:
                self.block(info.classes, f"Gather {node.name} with unknown ranks")
            return
        axis = int(node.attrs.get("axis", 0)) % rank
        channel_pos = rank + info.axis
        if axis == channel_pos:
            self.block(info.classes, f"Gather {node.name} indexes the channel axis")
            return
        # Gather replaces axis AXIS by the index dims: positions after it shift by idx_rank - 1.
        out_pos = channel_pos if channel_pos < axis else channel_pos + idx_rank - 1
        out_rank = rank + idx_rank - 1
        self.set_axis(node.outputs[0], out_pos - out_rank, info.classes)

    def visit_pad(self, node: gs.Node) -> None:
        info = self.a.axes.get(node.inputs[0].name)
        rank = self.rank(node.inputs[0])
        if info is None or rank is None:
            return
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None:
            pads = node.attrs.get("pads")
        axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        if pads is None:
            self.block(info.classes, f"Pad {node.name} has computed pads")
            return
        pads = [int(p) for p in np.asarray(pads).ravel()]
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        channel_pos = rank + info.axis
        n = len(axes)
        if channel_pos in axes:
            k = axes.index(channel_pos)
            if pads[k] != 0 or pads[k + n] != 0:
                self.block(info.classes, f"Pad {node.name} pads the channel axis")
                return
        self.set_axis(node.outputs[0], info.axis, info.classes)


def analyze_channels(graph: gs.Graph, shapes: dict[str, tuple], input_axes: dict[str, int] | None = None
                     ) -> ChannelAnalysis:
    """Build the channel classes, sites, pins and blocks for GRAPH (toposorted) with static SHAPES.

    INPUT_AXES gives the channel axis of graph inputs; by default it is read off the graph.
    """
    return _Builder(graph, shapes, input_axes).run()


def input_channel_axes(graph: gs.Graph, shapes: dict[str, tuple]) -> dict[str, int]:
    return _Builder(graph, shapes).input_hints()
