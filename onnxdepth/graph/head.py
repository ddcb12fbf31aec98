"""Graph queries behind the exclusion rules: the graph head, spatial changes, KV-cache outputs.

Each is a read-only question about a graph-surgeon graph; the walks share `walk` (graph/walk.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .consts import const_value
from .contrib import ATTENTION_OPS, MS_DOMAIN
from .lift import transform_weight_index
from .walk import WalkLimitExceeded, walk

__all__ = ["find_head", "spatial_change", "is_cache_output", "shape_derived", "reach", "descendants"]

# Ops whose output is a tensor's shape, not its data: walks over data do not cross them.
_SHAPE_OPS = ("Shape", "Size")


def _is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def find_head(graph: gs.Graph, with_branches: bool = True) -> set[str]:
    """Names of the transforms that form the graph head (without WITH_BRANCHES: H0 alone, each output's last
    transform).

    H0: a transform whose output reaches a graph output with no transform in between (detection
    head, classifier). A head *branch* extends H0 backwards through chains of transforms that feed
    only the next one, when every such chain starts at a fork of the trunk (a tensor that also feeds
    other transforms) and chains meet only each other, as the YOLOv8 Detect head's parallel cv2/cv3
    conv stacks do (into the DFL conv). A chain that runs back to the graph input (a plain MLP) or
    merges with the trunk (a ResNet's last block before its classifier) is not a head branch.
    """
    transforms = {id(n): n for n in graph.nodes if transform_weight_index(n) is not None}
    # KV-cache outputs (present = Concat(past input, new)) carry state, not the model's prediction.
    outputs = {id(t) for t in graph.outputs if not is_cache_output(t)}
    head: set[str] = set()
    branches: list[tuple[frozenset, list[gs.Node]]] = []  # (fork transforms, chain incl. its H0)
    for node in transforms.values():
        _, reaches = reach(node.outputs[0], forward=True, outputs=outputs, stop_at_merge=True)
        if not reaches:
            continue
        head.add(node.name)
        if not with_branches:
            continue
        frontier = [(node, [node])]
        while frontier:
            cur, chain = frontier.pop()
            prev, reaches_input = reach(cur.inputs[0], forward=False, outputs=outputs)
            links = []
            for pid in prev:
                p = transforms[pid]
                nxt, p_reaches = reach(p.outputs[0], forward=True, outputs=outputs)
                links.append(p if nxt == {id(cur)} and not p_reaches else None)
            if links and all(link is not None for link in links) and not reaches_input:
                frontier.extend((p, chain + [p]) for p in links)
            elif len(chain) > 1 and links and all(link is None for link in links) and not reaches_input:
                branches.append((frozenset(prev), chain))  # the chain starts at a fork of the trunk
    # Two chains from the same fork that meet again form a block (a diamond), not parallel branches.
    for k, (fork, chain) in enumerate(branches):
        members = {id(n) for n in chain}
        if any(other_fork == fork and members & {id(n) for n in other}
               for j, (other_fork, other) in enumerate(branches) if j != k):
            continue
        head.update(n.name for n in chain)
    return head


def spatial_change(node: gs.Node, shapes: dict[str, tuple]) -> bool:
    """True if NODE is a convolution whose output spatial size differs from its input's."""
    if node.op not in ("Conv", "ConvTranspose"):
        return False
    in_shape = shapes.get(node.inputs[0].name)
    out_shape = shapes.get(node.outputs[0].name)
    # Axes 2.. of an NC... tensor are the spatial ones.
    if in_shape and out_shape and None not in in_shape[2:] and None not in out_shape[2:]:
        return tuple(in_shape[2:]) != tuple(out_shape[2:])
    weight = const_value(node.inputs[1])
    kernel = weight.shape[2:]  # weight [out, in/group, k...]: the kernel sizes follow the two channel axes
    n = len(kernel)
    strides = node.attrs.get("strides", [1] * n)
    dilations = node.attrs.get("dilations", [1] * n)
    pads = node.attrs.get("pads", [0] * 2 * n)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if any(s != 1 for s in strides):
        return True
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return False
    # Output size = in + pad_begin + pad_end - dilation * (k - 1) for stride 1; pads are [begins..., ends...].
    return any(pads[i] + pads[i + n] != dilations[i] * (kernel[i] - 1) for i in range(n))


def is_cache_output(tensor: gs.Tensor) -> bool:
    """A graph output that appends to a graph input (a KV cache's present = Concat(past, new)), or the present
    key / value output (1, 2) of a fused attention op (GroupQueryAttention)."""
    if tensor.inputs and tensor.inputs[0].op in ATTENTION_OPS and tensor.inputs[0].domain == MS_DOMAIN:
        return any(tensor is out for out in tensor.inputs[0].outputs[1:3])
    if not tensor.inputs or tensor.inputs[0].op != "Concat":
        return False
    return any(not i.inputs and not isinstance(i, gs.Constant) for i in tensor.inputs[0].inputs)


def descendants(tensor: gs.Tensor) -> set[int]:
    """Ids of every tensor computed from TENSOR through non-transform nodes."""
    def data_outputs(t: gs.Tensor) -> list[gs.Tensor]:
        return [out for node in t.outputs if transform_weight_index(node) is None and node.op not in _SHAPE_OPS
                for out in node.outputs]
    return {id(t) for t in walk([tensor], data_outputs)}


def shape_derived(tensor: gs.Tensor, limit: int = 200) -> bool:
    """True if TENSOR is computed from constants and tensor shapes only (e.g. a dynamic export's anchor
    grid built with Shape/Range), not from any data."""
    if isinstance(tensor, gs.Constant):
        return True

    def producer_inputs(t: gs.Tensor) -> list[gs.Tensor]:
        producer = t.inputs[0]
        if producer.op in (*_SHAPE_OPS, "Constant"):
            return []  # a shape or a constant: nothing further to prove
        return [i for i in producer.inputs if not isinstance(i, gs.Constant)]

    try:
        for t in walk([tensor], producer_inputs, limit=limit):
            if not t.inputs:
                return False  # a graph input: data
            producer = t.inputs[0]
            if producer.op not in (*_SHAPE_OPS, "Constant") and transform_weight_index(producer) is not None:
                return False
    except WalkLimitExceeded:
        return False  # too far to prove
    return True


def reach(tensor: gs.Tensor, *, forward: bool, outputs: set, stop_at_merge: bool = False
          ) -> tuple[set[int], bool]:
    """Transforms reached from TENSOR through non-transform nodes, and whether a graph end was reached.

    Forward, the end is a graph output; backward, a graph input (a tensor with no producer). With
    STOP_AT_MERGE, a forward walk does not cross an Add/Sub whose other operand is not computed from
    TENSOR: a residual connection (a BERT layer's output projection is not the graph head even though
    only Adds and norms follow it), unlike a detection head's box decoding, whose operands share a source.
    """
    found: set[int] = set()
    own = descendants(tensor) if stop_at_merge else set()

    def next_tensors(t: gs.Tensor) -> list[gs.Tensor]:
        following: list[gs.Tensor] = []
        for node in (t.outputs if forward else t.inputs):
            if node.op in _SHAPE_OPS:
                continue  # carries the tensor's shape, not its data
            if transform_weight_index(node) is not None and (not forward or node.inputs[0] is t):
                found.add(id(node))
            elif stop_at_merge and node.op in ("Add", "Sub") and any(
                    id(i) not in own and const_value(i) is None and not shape_derived(i) for i in node.inputs):
                continue  # a residual merge with data from elsewhere
            elif forward:
                following.extend(node.outputs)
            else:
                following.extend(i for i in node.inputs if not isinstance(i, gs.Constant))
        return following

    end = False
    for t in walk([tensor], next_tensors, stop=_is_constant):
        if isinstance(t, gs.Constant):
            continue
        if (id(t) in outputs) if forward else not t.inputs:
            end = True
    return found, end
