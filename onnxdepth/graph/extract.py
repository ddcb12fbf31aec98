"""Cut a sub-model out of an ONNX graph: the nodes between given tensors (used for block-local scoring)."""

from __future__ import annotations

import onnx
from onnx import helper

from .external import folder_of, mark_folder

__all__ = ["extract_submodel", "with_extra_outputs"]


def extract_submodel(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The nodes needed to compute OUTPUTS from INPUTS (plus whatever graph inputs they also read).

    INPUTS become float graph inputs of unknown shape; weights are shared by reference to the same
    TensorProtos (copied into the new model), so this is proportional to the part cut out.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    stop = set(inputs)
    needed: set[int] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name in stop or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input if i} | set(outputs)
    initializers = [t for t in graph.initializer if t.name in used]
    graph_inputs = [v for v in graph.input if v.name in used and v.name not in stop]
    new_inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs]
    new_outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs]
    sub = helper.make_graph(nodes, f"{graph.name}_sub", new_inputs + graph_inputs, new_outputs, initializers)
    out = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    folder = folder_of(model)
    if folder is not None:
        mark_folder(out, folder)  # its initializers may still refer to the model's external data
    return out


def with_extra_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of MODEL that also outputs the intermediate float tensors NAMES."""
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    existing = {o.name for o in extra.graph.output}
    for name in names:
        if name not in existing:
            extra.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return extra
