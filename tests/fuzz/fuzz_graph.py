"""Structural fuzz families on the graph: cycles, duplicate and dangling names, unknown ops and domains,
If / Loop subgraphs and local functions, opsets 7-21, odd IR versions, deep chains, broken attributes and
hostile metadata. Each mutates a fresh seed model in place (`fuzz_cases` serializes it)."""

from __future__ import annotations

import random

import onnx
from onnx import TensorProto, helper

__all__ = ["GRAPH_MUTATIONS"]


def _node(rng: random.Random, model: onnx.ModelProto, ops: tuple[str, ...] = ()) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if not ops or n.op_type in ops] or list(model.graph.node)
    return rng.choice(nodes)


def cycle(rng, model):
    """The first node reads the output of a later node (every seed is a chain: a real cycle)."""
    nodes = model.graph.node
    later = nodes[rng.randrange(1, len(nodes))]
    nodes[0].input[0] = later.output[0]


def self_loop(rng, model):
    node = _node(rng, model)
    node.input[0] = node.output[0]


def duplicate_node_name(rng, model):
    a, b = rng.sample(list(model.graph.node), 2)
    b.name = a.name


def duplicate_output(rng, model):
    """Two nodes write the same tensor name."""
    a, b = rng.sample(list(model.graph.node), 2)
    b.output[0] = a.output[0]


def dangling_input(rng, model):
    node = _node(rng, model)
    node.input[rng.randrange(len(node.input))] = f"ghost_{rng.randrange(100)}"


def dangling_output(rng, model):
    model.graph.output[0].name = "nobody_writes_this"


def remove_node(rng, model):
    nodes = model.graph.node
    del nodes[rng.randrange(len(nodes))]


def remove_initializer(rng, model):
    inits = model.graph.initializer
    del inits[rng.randrange(len(inits))]


def empty_names(rng, model):
    node = _node(rng, model)
    node.name = ""
    if rng.random() < 0.5:
        node.output[0] = ""


def unknown_op(rng, model):
    _node(rng, model).op_type = rng.choice(["FooBar", "Conv2D", "", "MatMul\x00", "Relu" * 50])


def custom_domain(rng, model):
    """A node in a custom domain; half the time the domain is not even imported."""
    node = _node(rng, model)
    node.domain = rng.choice(["com.evil", "ai.onnx.ml", "com.microsoft", "local"])
    node.op_type = rng.choice([node.op_type, "CustomOp"])
    if rng.random() < 0.5:
        model.opset_import.append(helper.make_opsetid(node.domain, rng.randint(1, 3)))


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    inner.name = f"{node.name}_{name}"
    inner.output[0] = f"{node.output[0]}_{name}"
    return helper.make_graph([inner], name, [], [helper.make_tensor_value_info(inner.output[0], TensorProto.FLOAT,
                                                                              None)])


def if_subgraph(rng, model):
    """A node moved into both branches of an If on a constant condition (outer-scope inputs)."""
    index = rng.randrange(len(model.graph.node))
    node = model.graph.node[index]
    cond = f"cond_{index}"
    model.graph.initializer.append(helper.make_tensor(cond, TensorProto.BOOL, [], [rng.random() < 0.5]))
    wrapper = helper.make_node("If", [cond], [node.output[0]], name=f"if_{index}",
                               then_branch=_branch(node, "then"), else_branch=_branch(node, "else"))
    model.graph.node[index].CopyFrom(wrapper)


def loop_subgraph(rng, model):
    """A node moved into a Loop body run once (its output gains the scan axis: shapes downstream break)."""
    index = rng.randrange(len(model.graph.node))
    node = model.graph.node[index]
    body = _branch(node, "body")
    body.node.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body.input.extend([helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                       helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])])
    body.output.insert(0, helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []))
    trips, keep = f"trips_{index}", f"keep_{index}"
    model.graph.initializer.extend([helper.make_tensor(trips, TensorProto.INT64, [], [rng.choice([1, 0, -1, 10**12])]),
                                    helper.make_tensor(keep, TensorProto.BOOL, [], [True])])
    model.graph.node[index].CopyFrom(helper.make_node("Loop", [trips, keep], [node.output[0]], name=f"loop_{index}",
                                                      body=body))


def local_function(rng, model):
    """A Relu / Add replaced by a call of a model-local function doing the same (or recursing into itself)."""
    node = _node(rng, model, ("Relu", "Add"))
    arity = len(node.input)
    names = [f"i{k}" for k in range(arity)]
    callee = "MyOp" if rng.random() < 0.8 else "Loopy"
    body = [helper.make_node(node.op_type if callee == "MyOp" else "Loopy", names, ["o"], domain=""
                             if callee == "MyOp" else "local")]
    model.functions.append(helper.make_function("local", callee, names, ["o"], body,
                                                [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    node.op_type, node.domain = callee, "local"


def opset(rng, model):
    model.opset_import[0].version = rng.randint(7, 21)
    if rng.random() < 0.5:
        model.ir_version = rng.randint(3, 10)


def ir_version(rng, model):
    model.ir_version = rng.choice([0, 1, 2, 11, 12, 99, 2**62])


def deep_chain(rng, model):
    """Up to 1,800 Identity nodes between the last node and the graph output (bounded recursion?)."""
    last = model.graph.node[-1]
    out = last.output[0]
    last.output[0] = "chain_0"
    length = rng.randint(200, 1800)
    for k in range(length):
        target = out if k == length - 1 else f"chain_{k + 1}"
        model.graph.node.append(helper.make_node("Identity", [f"chain_{k}"], [target], name=f"id_{k}"))


def no_inputs(rng, model):
    del model.graph.input[:]


def output_is_input(rng, model):
    model.graph.output[0].name = model.graph.input[0].name


def value_info_lie(rng, model):
    """A value_info entry with the wrong element type or rank for an intermediate tensor."""
    del model.graph.value_info[:]
    node = _node(rng, model)
    model.graph.value_info.append(helper.make_tensor_value_info(
        node.output[0], rng.choice([TensorProto.INT8, TensorProto.FLOAT, TensorProto.STRING]),
        rng.choice([[7], [1, 2, 3, 4, 5, 6], [0], None])))


_BAD_ATTRIBUTES = {
    "Conv": [("strides", [0, 0]), ("kernel_shape", [99, 99]), ("group", 0), ("group", 3), ("pads", [-5] * 4),
             ("dilations", [0, 0]), ("kernel_shape", [3]), ("strides", [2**62, 1])],
    "Gemm": [("transB", 7), ("alpha", float("nan")), ("transA", 1)],
    "Softmax": [("axis", 99)],
    "LayerNormalization": [("axis", -99), ("epsilon", -1.0)],
    "Transpose": [("perm", [0, 0, 0]), ("perm", [5, 1, 0])],
    "MatMul": [("bogus", 1)],
    "Relu": [("alpha", "text")],
}


def bad_attributes(rng, model):
    node = _node(rng, model, tuple(_BAD_ATTRIBUTES))
    name, value = rng.choice(_BAD_ATTRIBUTES.get(node.op_type, [("bogus", 1)]))
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def hostile_metadata(rng, model):
    """Metadata keys onnxdepth itself reads or writes, with values an attacker chose."""
    key, value = rng.choice([("onnxdepth.external_dir", "/etc"), ("onnxdepth.external_dir", "relative/../x"),
                             ("onnxdepth.plan", "{not json"), ("onnxdepth.plan", '{"pruned": 5}'),
                             ("imgsz", "99999999"), ("imgsz", "[0, -3]"), ("imgsz", "9" * 5000)])
    helper.set_model_props(model, {key: value})


GRAPH_MUTATIONS = {fn.__name__: fn for fn in (
    cycle, self_loop, duplicate_node_name, duplicate_output, dangling_input, dangling_output, remove_node,
    remove_initializer, empty_names, unknown_op, custom_domain, if_subgraph, loop_subgraph, local_function, opset,
    ir_version, deep_chain, no_inputs, output_is_input, value_info_lie, bad_attributes, hostile_metadata)}
