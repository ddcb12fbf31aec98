"""ONNX Runtime's fused ops (the GenAI model builder, ORT's transformer optimizer) in terms the pruner reads.

- A skip-norm (SkipSimplifiedLayerNormalization / SkipLayerNormalization) is the residual Add and the
  norm in one op: `unfuse_skip_norms` splits it into Add + (Simplified)LayerNormalization before the
  graph is analysed, so the residual stream and the norm are separate tensors the passes can rewrite, and
  `fuse_skip_norms` joins every pair still intact on export.
- GroupQueryAttention / MultiHeadAttention take already projected Q/K/V: `graph.transformer` makes the
  projections, the op and the O projection one attention unit.
- Ops ONNX Runtime registers in the ONNX domain that onnx itself does not know (SimplifiedLayerNormalization)
  are hidden from the checker's schema lookup only (`checker_view`); everything else is checked in full,
  and ONNX Runtime checks those ops when it loads and runs the model.
"""

from __future__ import annotations

import functools

import onnx
import onnx_graphsurgeon as gs

__all__ = ["MS_DOMAIN", "SKIP_NORMS", "ATTENTION_OPS", "unfuse_skip_norms", "fuse_skip_norms", "checker_view",
           "has_contrib_ops", "implied_dims", "UNFUSED_KEY"]

MS_DOMAIN = "com.microsoft"
# Fused residual-add + norm -> the norm it ends with (its ONNX-domain op as ONNX Runtime registers it).
SKIP_NORMS = {"SkipSimplifiedLayerNormalization": "SimplifiedLayerNormalization",
              "SkipLayerNormalization": "LayerNormalization"}
# Attention ops that read projected Q (packed QKV) and optional K, V: input 0 query, 1 key, 2 value.
ATTENTION_OPS = {"GroupQueryAttention", "MultiHeadAttention"}
# Node-name prefix of the Add `unfuse_skip_norms` creates: `fuse_skip_norms` joins only those back.
UNFUSED_KEY = "onnxdepth_skip_add"


def has_contrib_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain == MS_DOMAIN for n in model.graph.node)


def unfuse_skip_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of MODEL's graph (weights shared, not copied: MODEL is not changed) where every skip-norm
    whose mean / inverse-std outputs are unused is an Add (input + skip [+ bias]) then its norm, and the
    number rewritten. The sum keeps the fused op's output-3 name, so the stream's tensors keep their names."""
    if not any(n.domain == MS_DOMAIN and n.op_type in SKIP_NORMS for n in model.graph.node):
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, count = [], 0
    for index, node in enumerate(out.graph.node):
        # Outputs: 0 normed, 1 mean, 2 inverse std (unused by every builder), 3 input + skip (+ bias).
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if node.domain != MS_DOMAIN or node.op_type not in SKIP_NORMS or outputs[1] or outputs[2]:
            nodes.append(node)
            continue
        count += 1
        name = node.name or f"{node.op_type}_{index}"
        inputs = list(node.input) + [""] * (5 - len(node.input))
        total = outputs[3] or f"{name}/skip_sum"
        # Inputs: 0 input, 1 skip, 2 gamma, then beta and bias (SkipLayerNorm) or bias (Simplified).
        bias = inputs[4] if node.op_type == "SkipLayerNormalization" else inputs[3]
        beta = inputs[3] if node.op_type == "SkipLayerNormalization" else ""
        summed = f"{total}/no_bias" if bias else total
        nodes.append(onnx.helper.make_node("Add", inputs[:2], [summed], name=f"{UNFUSED_KEY}/{name}"))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [summed, bias], [total], name=f"{name}/bias"))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        norm_attrs = {"axis": -1, "epsilon": attrs.get("epsilon", 1e-5)}
        if node.op_type == "SkipSimplifiedLayerNormalization":
            norm_attrs["stash_type"] = 1
        norm_inputs = [total, inputs[2]] + ([beta] if beta else [])
        nodes.append(onnx.helper.make_node(SKIP_NORMS[node.op_type], norm_inputs, [outputs[0]], name=name,
                                           **norm_attrs))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count


def fuse_skip_norms(graph: gs.Graph, shapes: dict[str, tuple]) -> int:
    """Join each Add that `unfuse_skip_norms` made and that still feeds its SimplifiedLayerNormalization into
    one SkipSimplifiedLayerNormalization again (the builder's form); return how many. SHAPES: the static
    shape of each tensor the session knows, so that only same-shape pairs (no broadcast) are joined."""
    count = 0
    for add in [n for n in graph.nodes if n.op == "Add" and n.name.startswith(UNFUSED_KEY + "/")]:
        if len(add.outputs) != 1 or len(add.inputs) != 2 or any(isinstance(t, gs.Constant) for t in add.inputs):
            continue
        total = add.outputs[0]
        norm = next((c for c in total.outputs if c.op == "SimplifiedLayerNormalization"
                     and c.inputs and c.inputs[0] is total and len(c.outputs) == 1), None)
        if norm is None or not all(_same_shape(shapes, t, total) for t in add.inputs):
            continue
        others = [c for c in total.outputs if c is not norm]
        keeps_sum = bool(others) or any(t is total for t in graph.outputs)
        fused = gs.Node("SkipSimplifiedLayerNormalization", name=norm.name, domain=MS_DOMAIN,
                        attrs={"epsilon": norm.attrs.get("epsilon", 1e-5)},
                        inputs=[add.inputs[0], add.inputs[1], norm.inputs[1]],
                        outputs=[norm.outputs[0], gs.Variable.empty(), gs.Variable.empty(),
                                 total if keeps_sum else gs.Variable.empty()])
        add.outputs.clear()
        norm.inputs.clear()
        norm.outputs.clear()
        graph.nodes.append(fused)
        count += 1
    if count:
        graph.cleanup().toposort()
    return count


def _same_shape(shapes: dict[str, tuple], a: gs.Tensor, b: gs.Tensor) -> bool:
    sa, sb = shapes.get(a.name), shapes.get(b.name)
    return sa is not None and sa == sb and None not in sa


@functools.lru_cache(maxsize=1)
def _ort_onnx_domain_ops() -> frozenset[str]:
    """Ops ONNX Runtime implements in the ONNX domain that onnx's own schema registry lacks."""
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema
    except ImportError:
        return frozenset()
    ours = {s.name for s in get_all_operator_schema() if s.domain in ("", "ai.onnx")}
    theirs = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
    return frozenset(ours - theirs)


def checker_view(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """MODEL as onnx.checker can check it in full, or None when it can as it is: each ONNX-domain node whose op
    only ONNX Runtime registers moves to the com.microsoft domain, which the checker leaves to the runtime
    (like every other contrib op). Only the light graph is copied: external data stays where it is."""
    unknown = _ort_onnx_domain_ops()
    if not any(n.domain in ("", "ai.onnx") and n.op_type in unknown for n in model.graph.node):
        return None
    view = onnx.ModelProto()
    view.CopyFrom(model)
    for node in view.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in unknown:
            node.domain = MS_DOMAIN
    if not any(o.domain == MS_DOMAIN for o in view.opset_import):
        view.opset_import.add(domain=MS_DOMAIN, version=1)
    return view


def implied_dims(model: onnx.ModelProto) -> dict[str, int]:
    """Symbolic input dims whose size the fused attention ops fix: the head size of each KV-cache input
    (the builder names it `kv_cache_dim`), from the projection width and the op's head counts."""
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input}
    dims: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain != MS_DOMAIN or node.op_type not in ATTENTION_OPS or len(node.input) < 5:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        heads = int(attrs.get("num_heads", 0))
        kv_heads = int(attrs.get("kv_num_heads", heads))
        width = _projected_width(node.input[0], producers, weights)
        packed = len(node.input) < 2 or not node.input[1]
        if not heads or width is None:
            continue
        # Packed QKV: [.., (heads + 2 kv_heads) * head_size]; separate Q: [.., heads * head_size].
        head_size, rest = divmod(width, heads + 2 * kv_heads if packed else heads)
        if rest or head_size <= 0:
            continue
        for past in node.input[3:5]:  # past key, past value: [batch, kv_heads, past_length, head_size]
            value = inputs.get(past)
            shape = value.type.tensor_type.shape.dim if value is not None else []
            if len(shape) == 4 and shape[3].dim_param:
                dims[shape[3].dim_param] = head_size
    return dims


def _projected_width(name: str, producers: dict, weights: dict) -> int | None:
    """Output width of the MatMul (constant [K, N] weight, N the width) or MatMulNBits (attribute N) making NAME,
    through a bias Add."""
    node = producers.get(name)
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers), None)
    if node is None:
        return None
    if node.op_type == "MatMul" and len(node.input) == 2 and len(weights.get(node.input[1], ())) == 2:
        return int(weights[node.input[1]][1])
    if node.op_type == "MatMulNBits":
        return next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "N"), None)
    return None
