"""Lift ONNX nodes into the thesis's node classes (Sec. 3.1.2), by graph structure, never by names.

Classes: transforms T (Conv/ConvTranspose/MatMul/Gemm with a constant weight), activations A,
norms N (also the spelled-out RMSNorm of exported Llama models), arithmetic/concat M, and everything else. Spelled-out activations such as
SiLU = x * Sigmoid(x), HardSwish = x * Clip(x + 3, 0, 6) / 6 and GELU = x * 0.5 * (1 + Erf(x / sqrt 2))
are lifted into one activation group so that they are pruned as one op.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .consts import const_value

__all__ = ["NodeClass", "Lifted", "Lifting", "lift", "TRANSFORM_OPS", "transform_weight_index"]


class NodeClass(enum.Enum):
    TRANSFORM = "transform"
    ACTIVATION = "activation"
    NORM = "norm"
    ARITHMETIC = "arithmetic"
    CONCAT = "concat"
    OTHER = "other"


TRANSFORM_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ACTIVATION_OPS = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "PRelu", "ThresholdedRelu", "Clip",
}
NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
            "SimplifiedLayerNormalization", "RMSNormalization"}
ARITHMETIC_OPS = {"Add", "Sub", "Mul", "Div"}
# Single-input ops that may sit inside a spelled-out gating activation (x * g(x)).
_GATE_INNER_OPS = {"Sigmoid", "HardSigmoid", "Tanh", "Erf", "Clip", "Softplus", "Relu", "Add", "Mul", "Div",
                   "Pow", "Sub"}


def transform_weight_index(node: gs.Node) -> int | None:
    """Input index of NODE's constant weight if NODE is a transform, else None."""
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) >= 2 and const_value(node.inputs[1]) is not None:
            if node.op == "Gemm" and node.attrs.get("transA", 0):
                return None
            return 1
        return None
    if node.op == "MatMul" and len(node.inputs) == 2:
        # x @ W with W constant and 2-D (a Linear layer); a constant left operand is not a layer.
        value = const_value(node.inputs[1])
        if value is not None and value.ndim == 2 and const_value(node.inputs[0]) is None:
            return 1
    return None


@dataclass(eq=False)
class Lifted:
    """One op of the thesis's node classes; spelled-out ops cover several ONNX nodes."""

    cls: NodeClass
    nodes: list[gs.Node]
    input: gs.Variable | None  # the activation input the op maps (None for n-ary ops)
    output: gs.Variable

    @property
    def head(self) -> gs.Node:
        return self.nodes[-1]


@dataclass
class Lifting:
    """Node -> lifted op map for one graph state."""

    of_node: dict[int, Lifted] = field(default_factory=dict)

    def get(self, node: gs.Node) -> Lifted:
        return self.of_node[id(node)]


def _single_consumer_chain_ok(tensor: gs.Variable, members: set[int]) -> bool:
    return all(id(c) in members for c in tensor.outputs) and id(tensor) not in _graph_outputs[0]


_graph_outputs: list = [set()]


def _scalar_const_operand(node: gs.Node, x: gs.Tensor) -> bool:
    """True if NODE is binary with X and one scalar constant."""
    if len(node.inputs) != 2:
        return False
    other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
    value = const_value(other)
    return value is not None and value.size == 1


def _match_gated(mul: gs.Node) -> list[gs.Node] | None:
    """Match Mul(x, g(x)) where g is a chain of single-input elementwise ops of x only."""
    if mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    for x, gate in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
        chain: list[gs.Node] = []
        tensor = gate
        ok = False
        while len(tensor.inputs) == 1 and len(chain) < 6:
            producer = tensor.inputs[0]
            if producer.op not in _GATE_INNER_OPS or not producer.inputs:
                break
            if len(tensor.outputs) != 1 or id(tensor) in _graph_outputs[0]:
                break
            src = producer.inputs[0]
            if producer.op in ("Add", "Mul", "Div", "Pow", "Sub"):
                if not _scalar_const_operand(producer, src):
                    # Binary op: X must be one operand, the other a scalar constant.
                    if producer.inputs[1] is x and _scalar_const_operand(producer, x) is False:
                        break
                    break
                if producer.inputs[0] is not x and producer.inputs[0] is not src:
                    break
            chain.append(producer)
            if src is x:
                ok = True
                break
            tensor = src
        if ok and any(n.op in ("Sigmoid", "HardSigmoid", "Tanh", "Erf", "Clip") for n in chain):
            return list(reversed(chain)) + [mul]
    return None


def _only_consumer(tensor: gs.Tensor, op: str | tuple[str, ...]) -> gs.Node | None:
    ops = (op,) if isinstance(op, str) else op
    if len(tensor.outputs) == 1 and tensor.outputs[0].op in ops and id(tensor) not in _graph_outputs[0]:
        return tensor.outputs[0]
    return None


def _match_rmsnorm(pow_node: gs.Node) -> tuple[list[gs.Node], gs.Tensor] | None:
    """Spelled-out RMSNorm: [Cast] Pow(x, 2) ReduceMean Add(eps) Sqrt Div(1, .)|Reciprocal Mul(x, .) [Cast] [Mul(w)].

    Returns the group's nodes and its input tensor.
    """
    exponent = const_value(pow_node.inputs[1]) if len(pow_node.inputs) == 2 else None
    if exponent is None or exponent.size != 1 or float(exponent.ravel()[0]) != 2.0:
        return None
    xc = pow_node.inputs[0]
    nodes = [pow_node]
    reduce = _only_consumer(pow_node.outputs[0], "ReduceMean")
    if reduce is None:
        return None
    nodes.append(reduce)
    tensor = reduce.outputs[0]
    scale_mul = None
    for _ in range(4):
        nxt = _only_consumer(tensor, ("Add", "Sqrt", "Div", "Reciprocal", "Mul"))
        if nxt is None:
            return None
        if nxt.op == "Mul":
            if xc in nxt.inputs:
                scale_mul = nxt
                nodes.append(nxt)
            break
        nodes.append(nxt)
        tensor = nxt.outputs[0]
    if scale_mul is None:
        return None
    # xc is used by the Pow and the scaling Mul only; a Cast in front of it belongs to the norm.
    x = xc
    if xc.inputs and xc.inputs[0].op == "Cast" and len(xc.outputs) == 2:
        nodes.insert(0, xc.inputs[0])
        x = xc.inputs[0].inputs[0]
    out = scale_mul.outputs[0]
    cast_out = _only_consumer(out, "Cast")
    if cast_out is not None:
        nodes.append(cast_out)
        out = cast_out.outputs[0]
    weight_mul = _only_consumer(out, "Mul")
    if weight_mul is not None:
        other = weight_mul.inputs[0] if weight_mul.inputs[1] is out else weight_mul.inputs[1]
        value = const_value(other)
        if value is not None and value.ndim == 1:
            nodes.append(weight_mul)
    return nodes, x


def lift(graph: gs.Graph) -> Lifting:
    """Classify every node of GRAPH; spelled-out activations become one ACTIVATION group."""
    _graph_outputs[0] = {id(t) for t in graph.outputs}
    lifting = Lifting()
    for node in graph.nodes:
        if id(node) in lifting.of_node:
            continue
        if node.op == "Mul":
            group = _match_gated(node)
            if group is not None:
                out_node = group[-1]
                # Absorb a trailing scale by a scalar constant (HardSwish's /6, GELU's *0.5).
                output = out_node.outputs[0]
                consumers = output.outputs
                if (len(consumers) == 1 and consumers[0].op in ("Mul", "Div") and id(output) not in _graph_outputs[0]
                        and consumers[0].inputs[0] is output and _scalar_const_operand(consumers[0], output)):
                    group.append(consumers[0])
                x = next(t for t in node.inputs if t is not node.inputs[0] or True)
                # The gate input x is the Mul operand that is not produced inside the group.
                inside = {id(n) for n in group}
                x = next(t for t in node.inputs if not (t.inputs and id(t.inputs[0]) in inside))
                lifted = Lifted(NodeClass.ACTIVATION, group, x, group[-1].outputs[0])
                for member in group:
                    lifting.of_node[id(member)] = lifted
                continue
    for node in graph.nodes:
        if node.op == "Pow" and id(node) not in lifting.of_node:
            match = _match_rmsnorm(node)
            if match is not None:
                group, x = match
                lifted = Lifted(NodeClass.NORM, group, x, group[-1].outputs[0])
                for member in group:
                    lifting.of_node[id(member)] = lifted
    for node in graph.nodes:
        if id(node) in lifting.of_node:
            continue
        cls = NodeClass.OTHER
        data_in = node.inputs[0] if node.inputs else None
        if transform_weight_index(node) is not None:
            cls = NodeClass.TRANSFORM
        elif node.op in ACTIVATION_OPS:
            cls = NodeClass.ACTIVATION
        elif node.op in NORM_OPS:
            cls = NodeClass.NORM
        elif node.op in ARITHMETIC_OPS and len(node.inputs) == 2:
            if all(const_value(t) is None for t in node.inputs):
                cls, data_in = NodeClass.ARITHMETIC, None
        elif node.op == "Concat":
            cls, data_in = NodeClass.CONCAT, None
        out = node.outputs[0] if node.outputs else None
        lifting.of_node[id(node)] = Lifted(cls, [node], data_in, out)
    return lifting
