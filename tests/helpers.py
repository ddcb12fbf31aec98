"""Helpers for the onnxdepth tests: builders registry, graph queries, and hand-built reference models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphs

#: Every test model: the 12 families plus the two exact-identity builders.
ALL_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    **graphs.FAMILIES,
    "identity_layer": graphs.build_identity_layer,
    "identity_matmul": graphs.build_identity_matmul,
}

LAYER_OPS = graphs.LAYER_OPS

# Unit counts of every test model, read off its builder in graphs.py and checked against PruneSession by
# tests/test_units.py::test_exclusion_counts; the other files derive their case counts from this table.
# family: (head, spatial, unprovable coupling, prunable, prunable and channel-preserving)
EXPECTED_COUNTS = {
    "mlp": (1, 0, 0, 3, 1),
    "cnn_channels": (1, 1, 0, 3, 1),
    "residual": (1, 0, 0, 7, 4),
    # The two concat branches start at one fork and meet again: a block (diamond), not a head branch.
    "concat": (1, 0, 0, 4, 0),
    "c2f_split": (1, 0, 0, 4, 2),
    "depthwise": (1, 0, 0, 3, 1),
    "sppf": (1, 0, 0, 2, 0),
    "upsample_concat": (1, 1, 0, 3, 1),
    "batchnorm": (1, 0, 0, 3, 1),
    "bias": (1, 0, 0, 3, 1),
    "grouped": (1, 0, 1, 1, 1),
    "silu_gelu": (1, 0, 0, 2, 1),
    "identity_layer": (1, 0, 0, 2, 1),
    "identity_matmul": (1, 0, 0, 2, 2),
}

# Ops that may belong to a layer's own "activation / norm / bias" tail (see block_end).
_TAIL_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Mul", "Add", "Erf", "Div", "BatchNormalization", "Tanh"}


# The package (import name) that ships each model of onnxdepth.models_zoo.PACKAGED: the 'models' extra.
_PACKAGED_BY = {"nudenet-yolov8n": "nudenet", "ppocr-det": "rapidocr_onnxruntime", "ppocr-rec": "rapidocr_onnxruntime"}


def packaged_model_or_skip(name: str) -> Path:
    """models_zoo.packaged_model(NAME), skipping only when the package that ships it is not installed.

    Any other failure (the package is there but its file is missing, an unknown name) is ours and
    fails. The reason reads like pytest.importorskip's, so ONNXDEPTH_REQUIRE_EXTRAS=1 fails it too.
    """
    from onnxdepth.models_zoo import packaged_model

    package = _PACKAGED_BY[name]
    if importlib.util.find_spec(package) is None:  # found without importing it (nudenet imports cv2)
        pytest.skip(f"could not import {package!r}: not installed (pip install 'onnxdepth[models]')")
    return packaged_model(name)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def layer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in LAYER_OPS]


def node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    matches = [n for n in model.graph.node if n.name == name]
    assert len(matches) == 1, f"{len(matches)} nodes named {name!r}"
    return matches[0]


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def output_signature(model: onnx.ModelProto) -> list[tuple[str, tuple]]:
    return [(o.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                           for d in o.type.tensor_type.shape.dim))
            for o in model.graph.output]


def block_end(model: onnx.ModelProto, layer: onnx.NodeProto) -> str:
    """The tensor where LAYER's own tail (bias Add, norm, activation) ends.

    Grows a region from LAYER forward, absorbing a consumer when it is a tail op all of whose
    non-constant inputs come from the region (so x * sigmoid(x) and the Erf-GELU chain are absorbed,
    a residual Add of the block input is not). Returns the single region tensor used outside.
    """
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    region = [layer]
    produced = set(layer.output)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node in region or node.op_type not in _TAIL_OPS:
                continue
            dynamic = [i for i in node.input if i and i not in inits]
            if dynamic and all(i in produced for i in dynamic):
                region.append(node)
                produced.update(node.output)
                changed = True
    used_outside = {t for t in produced
                    if t in outputs or any(t in n.input for n in model.graph.node if n not in region)}
    assert len(used_outside) == 1, f"{layer.name}: tail ends in {sorted(used_outside)}"
    return used_outside.pop()


def bypass(model: onnx.ModelProto, source: str, target: str) -> onnx.ModelProto:
    """A copy of MODEL in which every use of TARGET reads SOURCE instead, dead nodes removed.

    This is "the model without the sub-graph between SOURCE and TARGET", built by hand.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    assert target not in {o.name for o in g.output}, "cannot bypass into a graph output"
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == target:
                node.input[k] = source
    _remove_dead(out)
    return out


def _remove_dead(model: onnx.ModelProto) -> None:
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    del g.value_info[:]


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for k, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def run_both(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> tuple[list, list]:
    feeds = graphs.random_inputs(a, seed)
    return graphs.run(a, feeds), graphs.run(b, feeds)


def count_ops(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def names(items: Iterable) -> list[str]:
    return [i.name for i in items]
