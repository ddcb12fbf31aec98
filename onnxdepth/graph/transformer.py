"""Transformer structure lifted from exported graphs, by structure, never by names.

An attention block is found from its Softmax: the activation MatMul feeding it (Q K^T), the one it
feeds (A V), the Q/K/V projections reached backwards from those through non-transform ops (reshape,
transpose, rotary embedding, the Expand/Reshape that repeats key/value heads for grouped-query
attention, the past-key/value Concat), and the single O projection reached forwards. Its *region* is
every node on a path from the Q/K/V projections to the O projection. Layers are then numbered by
attention block in topological order; the remaining transforms between two attention blocks form
that layer's MLP (gate/up/down by structure: down consumes the gated product, gate feeds the
activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .consts import const_value
from .contrib import ATTENTION_OPS, MS_DOMAIN
from .lift import NodeClass, Lifting, transform_weight_index
from .walk import walk

__all__ = ["AttentionBlock", "TransformerLayer", "find_attention_blocks", "find_layers"]


@dataclass(eq=False)
class AttentionBlock:
    q: gs.Node
    k: gs.Node
    v: gs.Node
    o: gs.Node
    region: list[gs.Node]  # every node from the projections through the O projection (inclusive)
    input: gs.Tensor  # the tensor Q/K/V read (the input norm's output)
    output: gs.Tensor  # O projection output (after its bias, if any)
    softmax: gs.Node  # or the fused attention op (GroupQueryAttention) standing for the whole core

    @property
    def projections(self) -> list[gs.Node]:
        """Q, K, V and O, each once (a packed QKV projection is Q, K and V)."""
        return list({id(n): n for n in (self.q, self.k, self.v, self.o)}.values())


@dataclass(eq=False)
class TransformerLayer:
    index: int
    attention: AttentionBlock
    mlp: dict[str, gs.Node] = field(default_factory=dict)  # kind (mlp_gate/mlp_up/mlp_down) -> transform


def _is_activation_matmul(node: gs.Node) -> bool:
    return node.op == "MatMul" and len(node.inputs) == 2 and all(const_value(t) is None for t in node.inputs)


_SHAPE_OPS = {"Shape", "Size"}


def _walk(start: gs.Tensor, *, forward: bool, stop) -> list[gs.Node]:
    """Nodes where STOP(node) holds, reached from START through nodes where it does not.

    Shape/Size nodes are not followed: they carry a tensor's shape, not its data.
    """
    found: list[gs.Node] = []

    def onward(tensor: gs.Tensor) -> list[gs.Tensor]:
        if isinstance(tensor, gs.Constant):
            return []
        nxt = []
        for node in tensor.outputs if forward else tensor.inputs:
            if node.op in _SHAPE_OPS:
                continue
            if stop(node):
                if all(n is not node for n in found):
                    found.append(node)
            else:
                nxt.extend(node.outputs if forward else node.inputs)
        return nxt

    for _ in walk([start], onward):
        pass
    return found


def _nearest(start: gs.Tensor, *, forward: bool, stop) -> gs.Node | None:
    """The first node where STOP holds in breadth-first order from START (Shape/Size not followed).

    Breadth-first on purpose (the nearest match, level by level), so not the depth-first `graph.walk`."""
    frontier, seen = [start], set()
    while frontier:
        nxt = []
        for tensor in frontier:
            if id(tensor) in seen or isinstance(tensor, gs.Constant):
                continue
            seen.add(id(tensor))
            for node in (tensor.outputs if forward else tensor.inputs):
                if node.op in _SHAPE_OPS:
                    continue
                if stop(node):
                    return node
                nxt.extend(node.outputs if forward else node.inputs)
        frontier = nxt
    return None


def _transform(node: gs.Node) -> bool:
    return transform_weight_index(node) is not None


def find_attention_blocks(graph: gs.Graph) -> list[AttentionBlock]:
    blocks = []
    for softmax in graph.nodes:
        if softmax.op != "Softmax":
            continue
        qk = _nearest(softmax.inputs[0], forward=False, stop=lambda n: n.op == "MatMul" or _transform(n))
        av = _nearest(softmax.outputs[0], forward=True, stop=lambda n: n.op == "MatMul" or _transform(n))
        if qk is None or av is None or not (_is_activation_matmul(qk) and _is_activation_matmul(av)):
            continue
        q = _walk(qk.inputs[0], forward=False, stop=_transform)
        k = _walk(qk.inputs[1], forward=False, stop=_transform)
        v = _walk(av.inputs[1], forward=False, stop=_transform)
        o = _walk(av.outputs[0], forward=True, stop=_transform)
        if not (len(q) == len(k) == len(v) == len(o) == 1):
            continue
        q, k, v, o = q[0], k[0], v[0], o[0]
        if not (q.inputs[0] is k.inputs[0] is v.inputs[0]):
            continue  # cross-attention or separate inputs: not supported as one unit
        region = _region([q, k, v], o)
        output = o.outputs[0]
        # A bias Add on the O projection belongs to the block.
        if len(output.outputs) == 1 and output.outputs[0].op == "Add":
            add = output.outputs[0]
            other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
            if const_value(other) is not None:
                region.append(add)
                output = add.outputs[0]
        block_input, output = _rows_layout(q, output, region)
        blocks.append(AttentionBlock(q, k, v, o, region, block_input, output, softmax))
    return blocks + [b for n in graph.nodes if (b := _fused_block(n)) is not None]


def _fused_block(node: gs.Node) -> AttentionBlock | None:
    """The attention block around a fused attention op (GroupQueryAttention, MultiHeadAttention: inputs 0-2 the
    projected query (packed QKV when key and value are absent), key and value; rotary inside or before it): the
    projections reached backwards from those, the O projection forwards from its output 0."""
    if node.domain != MS_DOMAIN or node.op not in ATTENTION_OPS or not node.inputs or not node.outputs:
        return None
    query = node.inputs[0]
    key = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None
    value = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if (key is None) != (value is None):
        return None
    q = _walk(query, forward=False, stop=_transform)
    k = _walk(key, forward=False, stop=_transform) if key is not None else q
    v = _walk(value, forward=False, stop=_transform) if value is not None else q
    o = _walk(node.outputs[0], forward=True, stop=_transform)
    if not (len(q) == len(k) == len(v) == len(o) == 1):
        return None
    q, k, v, o = q[0], k[0], v[0], o[0]
    if not (q.inputs[0] is k.inputs[0] is v.inputs[0]):
        return None
    region = _region(list({id(p): p for p in (q, k, v)}.values()), o)
    return AttentionBlock(q, k, v, o, region, q.inputs[0], o.outputs[0], node)


def _rows_layout(q: gs.Node, output: gs.Tensor, region: list[gs.Node]) -> tuple[gs.Tensor, gs.Tensor]:
    """The block's input and output. A Conv1D-style export (GPT-2: `x.view(-1, C)`, Gemm, `view(*lead, C')`)
    flattens the hidden states into rows before the (fused) Q/K/V projection and unflattens after the O
    projection, the unflatten's shape read off tensors inside the block: both Reshapes then belong to the
    block (added to REGION), so that the pruned block is an identity between tensors of the same shape and
    nothing outside it reads a removed tensor."""
    flatten = q.inputs[0].inputs[0] if len(q.inputs[0].inputs) == 1 else None
    unflatten = output.outputs[0] if len(output.outputs) == 1 else None
    if (flatten is None or unflatten is None or flatten.op != "Reshape" or unflatten.op != "Reshape"
            or unflatten.inputs[0] is not output or const_value(unflatten.inputs[1]) is not None
            or any(c.op not in ("Gemm", "MatMul") for c in q.inputs[0].outputs)):
        return q.inputs[0], output
    region.insert(0, flatten)
    region.append(unflatten)
    return flatten.inputs[0], unflatten.outputs[0]


def _region(sources: list[gs.Node], sink: gs.Node) -> list[gs.Node]:
    """Nodes on a path from SOURCES' outputs to SINK (both inclusive)."""
    forward: dict[int, gs.Node] = {}
    stack = [t for s in sources for t in s.outputs]
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.outputs:
            forward[id(node)] = node
            if node is not sink:
                stack.extend(node.outputs)
    backward: dict[int, gs.Node] = {}
    stack, seen = list(sink.inputs), set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen or isinstance(tensor, gs.Constant):
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            backward[id(node)] = node
            stack.extend(node.inputs)
    inner = [n for key, n in forward.items() if key in backward]
    region = list(sources) + inner + [sink]
    unique: dict[int, gs.Node] = {id(n): n for n in region}
    return list(unique.values())


def find_layers(graph: gs.Graph, lifting: Lifting, head: set[str]) -> list[TransformerLayer]:
    """Transformer layers in order: each attention block and the MLP transforms after it."""
    order = {id(n): k for k, n in enumerate(graph.nodes)}  # graph must be toposorted
    # A block reached into a subgraph (an If / Loop body reading the outer tensors) is not a top-level unit.
    blocks = [b for b in find_attention_blocks(graph) if all(id(n) in order for n in b.region)]
    if not blocks:
        return []
    blocks.sort(key=lambda b: order[id(b.q)])
    in_attention = {id(n) for b in blocks for n in b.projections}
    layers = [TransformerLayer(i, b) for i, b in enumerate(blocks)]
    starts = [order[id(b.o)] for b in blocks] + [len(order)]
    for node in graph.nodes:
        if not _transform(node) or id(node) in in_attention or node.name in head:
            continue
        pos = order[id(node)]
        for i in range(len(blocks)):
            if starts[i] < pos < order.get(id(blocks[i + 1].q), len(order)) if i + 1 < len(blocks) else starts[i] < pos:
                layers[i].mlp.setdefault("_members", []).append(node)
                break
    for layer in layers:
        members = layer.mlp.pop("_members", [])
        layer.mlp = _mlp_kinds(members, lifting)
    return layers


def _mlp_kinds(members: list[gs.Node], lifting: Lifting) -> dict[str, gs.Node]:
    """gate/up/down of a gated MLP, or up/down of a plain one (BERT: intermediate + output)."""
    if len(members) == 3:
        shared = [n for n in members if sum(m.inputs[0] is n.inputs[0] for m in members) == 2]
        down = [n for n in members if n not in shared]
        if len(shared) == 2 and len(down) == 1:
            gate = next((n for n in shared if _feeds_activation(n, lifting)), None)
            if gate is not None:
                up = next(n for n in shared if n is not gate)
                return {"mlp_gate": gate, "mlp_up": up, "mlp_down": down[0]}
    if len(members) == 2:
        first, second = members
        return {"mlp_up": first, "mlp_down": second}
    return {f"mlp_{k}": n for k, n in enumerate(members)}


def _feeds_activation(node: gs.Node, lifting: Lifting) -> bool:
    for consumer in node.outputs[0].outputs:
        op = lifting.of_node.get(id(consumer))
        if op is not None and op.cls is NodeClass.ACTIVATION:
            return True
    return False
