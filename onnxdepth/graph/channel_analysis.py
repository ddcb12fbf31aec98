"""The channel analysis as data: classes in a union-find, channel axes, sites, and the build state.

A ChannelAnalysis is immutable once built (see channels.py); RuleContext is what the per-op rules
(channel_rules.py, channel_layout.py) extend while it is being built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["AnalysisError", "UnionFind", "ChannelAxis", "Site", "TransformInfo", "ChannelAnalysis", "RuleContext"]


class AnalysisError(Exception):
    """The graph's channel sizes are inconsistent (a bug in a rewrite, or a malformed model)."""


class UnionFind:
    """Channel classes as a union-find over integer ids (PARENT[i] == i at a root)."""

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
    """One transform's channels: the classes of its data input and output, and its weight's input index."""

    node: gs.Node
    weight_index: int
    data_in: gs.Tensor
    data_out: gs.Tensor
    in_classes: np.ndarray
    out_classes: np.ndarray
    kind: str  # "dense" | "depthwise" | "grouped"


@dataclass
class ChannelAnalysis:
    """Channel classes of one graph state: tensor axes, sites, transforms, pinned and blocked classes."""

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


class RuleContext:
    """The analysis under construction, with what the per-op rules need to extend it.

    A: the ChannelAnalysis being filled; SHAPES: static shapes by tensor name; REDUCES_CHANNELS: nodes
    that consumed their input's channels whole (the safety net of the node walk lets them pass).
    """

    def __init__(self, shapes: dict[str, tuple]):
        self.shapes = shapes
        self.a = ChannelAnalysis(uf=UnionFind())
        self.reduces_channels: dict[int, bool] = {}

    def rank(self, tensor: gs.Tensor) -> int | None:
        if isinstance(tensor, gs.Constant):
            return len(tensor.shape)  # from the lazy values: an external tensor is not read
        shape = self.shapes.get(tensor.name)
        if shape is not None:
            return len(shape)
        if tensor.shape is not None:
            return len(tensor.shape)
        return None

    def dims(self, tensor: gs.Tensor) -> tuple | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape)
        shape = self.shapes.get(tensor.name)
        if shape is None and tensor.shape is not None:
            shape = tuple(d if isinstance(d, int) else None for d in tensor.shape)  # symbolic dims unknown
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
