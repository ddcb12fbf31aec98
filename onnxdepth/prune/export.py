"""Export a pruning session's graph as an ONNX model, without the pruned identities where possible."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..graph.contrib import fuse_skip_norms
from ..graph.nbits import requantize_nbits

__all__ = ["to_model"]


def to_model(graph: gs.Graph, identity_nodes: set[int], template: onnx.ModelProto,
             keep: set[str] | None = None, *, shapes: dict | None = None,
             nbits: tuple[dict, dict] | None = None) -> onnx.ModelProto:
    """Export: bypass pruned identities, clean up, toposort, keep TEMPLATE's metadata.

    Works on a copy, so the session can go on pruning (and patching through its identities) after.
    Tensors named in KEEP survive (behind an Identity if need be), e.g. layer boundaries for rescoring.
    IDENTITY_NODES holds the ids of GRAPH's pruned identities (the copy's nodes are matched by name).
    SHAPES (the session's static shapes) when the session split skip-norms: those still whole are joined again.
    NBITS: (the session's dequantized MatMulNBits records, its weight slices): those MatMuls quantized again.
    """
    keep = keep or set()
    identity_names = {node.name for node in graph.nodes if id(node) in identity_nodes}
    graph = graph.copy()
    outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if node.name not in identity_names or node.op != "Identity" or not node.outputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in outputs or dst.name in keep:
            continue  # a graph output keeps its name; an Identity stays in front of it
        for consumer in list(dst.outputs):
            for k, t in enumerate(consumer.inputs):
                if t is dst:
                    consumer.inputs[k] = src
        node.outputs.clear()
    graph.cleanup().toposort()
    if shapes is not None:
        fuse_skip_norms(graph, shapes)
    if nbits is not None:
        requantize_nbits(graph, *nbits)
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = template.ir_version
    del model.opset_import[:]
    model.opset_import.extend(template.opset_import)
    model.producer_name = template.producer_name
    model.producer_version = template.producer_version
    model.metadata_props.extend(template.metadata_props)
    # Intermediate shapes changed: drop stale value_info, shape inference recomputes what it can.
    del model.graph.value_info[:]
    return model
