"""Load-time validation of what onnxdepth's graph code takes for granted and a hostile file can break.

`validate_model` runs before any analysis (`io.load_model`) and refuses, with a typed error naming the thing
at fault:

- tensors (initializers, sparse initializers, Constant attributes, in subgraphs too) with a negative dim, an
  unknown element type, or a declared size their data does not have (a [10**6, 10**6] weight with ten
  values): sizes are computed as Python integers from the dims, nothing is allocated;
- graph inputs whose declared shape cannot be fed (a dim over shapes.MAX_DIM, or more bytes than this
  process can allocate, from psutil and RLIMIT_AS);
- a tensor written twice (two nodes, or a node and a graph input / initializer), a cycle, and local
  functions that call themselves: graph-surgeon's toposort would report those as a bare exception;
- names and other strings that are not UTF-8, a Transpose perm that is no permutation, a Conv group, stride
  or dilation below 1.

External data (location, offset, length against the file) is checked by `external.check_external`.
"""

from __future__ import annotations

import math
import resource

import onnx
from onnx import TensorProto

from ..errors import ModelLoadError, UnsupportedModelError
from .shapes import MAX_DIM

__all__ = ["available_memory", "validate_model"]

#: Bytes per element of the fixed-size types; the 4-bit ones take half a byte (`_raw_bytes`).
_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.UINT16: 2,
             TensorProto.INT16: 2, TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1,
             TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8, TensorProto.UINT32: 4, TensorProto.UINT64: 8,
             TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16, TensorProto.BFLOAT16: 2}
_ITEMSIZE.update({getattr(TensorProto, name): 1 for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                                             "FLOAT8E5M2FNUZ", "FLOAT8E8M0") if hasattr(TensorProto, name)})
_NIBBLE_TYPES = {getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                 if hasattr(TensorProto, name)}
#: The typed field each element type keeps its values in when there is no raw_data, and values per element.
_FIELD = {TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
          TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
          TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
          TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1)}
#: A graph input must fit this many times into the memory left: feeds, activations, calibration batches.
_INPUT_COPIES = 8
#: Ops whose weights onnxdepth reads as numbers.
_LAYER_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def available_memory() -> int:
    """Bytes this process could still allocate: the system's available memory, less whatever RLIMIT_AS leaves
    unused (both from psutil)."""
    import psutil

    free = int(psutil.virtual_memory().available)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        free = min(free, max(soft - int(psutil.Process().memory_info().vms), 0))
    return free


def _elements(tensor: TensorProto, what: str) -> int:
    for d in tensor.dims:
        if d < 0:
            raise ModelLoadError(f"{what} has a negative dimension {list(tensor.dims)}")
    return math.prod(tensor.dims)  # Python integers: [10**6, 10**6] is 10**12, computed, not allocated


def _raw_bytes(data_type: int, elements: int) -> int | None:
    if data_type in _NIBBLE_TYPES:
        return (elements + 1) // 2  # two 4-bit values per byte
    size = _ITEMSIZE.get(data_type)
    return None if size is None else elements * size


def _held_values(tensor: TensorProto) -> int:
    """How many values TENSOR's typed data field holds (the field its type uses)."""
    field, per_element = _FIELD.get(tensor.data_type, ("int32_data", 1))
    held = len(getattr(tensor, field))
    if tensor.data_type in _NIBBLE_TYPES:
        return held * 2  # packed two per int32 entry
    return held // per_element


def check_tensor(tensor: TensorProto, what: str) -> None:
    """Raise ModelLoadError unless TENSOR's dims, type and inline data agree (external data: `external`)."""
    elements = _elements(tensor, what)
    if tensor.data_type not in _ITEMSIZE and tensor.data_type not in _NIBBLE_TYPES \
            and tensor.data_type != TensorProto.STRING:
        raise ModelLoadError(f"{what} has an unknown element type {tensor.data_type}")
    if tensor.data_location == TensorProto.EXTERNAL:
        return
    if tensor.HasField("raw_data") and tensor.data_type != TensorProto.STRING:
        expected = _raw_bytes(tensor.data_type, elements)
        if len(tensor.raw_data) != expected:
            raise ModelLoadError(f"{what} has {len(tensor.raw_data)} bytes, expected {expected} for dims "
                                 f"{list(tensor.dims)} (truncated file?)")
        return
    held = _held_values(tensor)
    if held != elements and not (tensor.data_type in _NIBBLE_TYPES and held == elements + 1):
        raise ModelLoadError(f"{what} declares dims {list(tensor.dims)} ({elements:,} values) but holds {held:,}")


def _check_tensors(graph: onnx.GraphProto, scope: str) -> None:
    """check_tensor on every tensor GRAPH holds: initializers, sparse ones, Constant attributes."""
    for init in graph.initializer:
        check_tensor(init, f"{scope}initializer {init.name!r}")
    for sparse in graph.sparse_initializer:
        check_tensor(sparse.values, f"{scope}sparse initializer {sparse.values.name!r}")
        check_tensor(sparse.indices, f"{scope}sparse initializer {sparse.values.name!r}'s indices")
        if any(d < 0 for d in sparse.dims):
            raise ModelLoadError(f"{scope}sparse initializer {sparse.values.name!r} has a negative dimension "
                                 f"{list(sparse.dims)}")
    for node in graph.node:
        for attribute in node.attribute:
            what = f"{scope}{node.op_type} node {node.name!r}'s attribute {attribute.name!r}"
            if attribute.HasField("t"):
                check_tensor(attribute.t, what)
            for k, tensor in enumerate(attribute.tensors):
                check_tensor(tensor, f"{what}[{k}]")


def _check_layer_weights(graph: onnx.GraphProto) -> None:
    """Layer ops must read numbers: a string tensor as a MatMul weight is refused here, not in numpy."""
    kinds = {init.name: init.data_type for init in graph.initializer}
    for node in graph.node:
        if node.op_type in _LAYER_OPS and node.domain in ("", "ai.onnx"):
            for name in node.input:
                if kinds.get(name) == TensorProto.STRING:
                    raise UnsupportedModelError(f"{node.op_type} node {node.name!r} reads the string tensor "
                                                f"{name!r} as a weight")


def _check_inputs(model: onnx.ModelProto) -> None:
    """Every graph input's declared shape must be feedable: dims within MAX_DIM, bytes (symbolic dims
    counted as 1) well within the memory left."""
    init_names = {init.name for init in model.graph.initializer}
    budget = None
    for value in model.graph.input:
        if value.name in init_names or not value.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        if any(d > MAX_DIM for d in dims):
            raise UnsupportedModelError(f"graph input {value.name!r} declares a dimension over {MAX_DIM:,}: {dims}")
        size = math.prod(max(d, 0) for d in dims) * _ITEMSIZE.get(value.type.tensor_type.elem_type, 8)
        budget = available_memory() if budget is None else budget
        if size * _INPUT_COPIES > budget:
            raise UnsupportedModelError(f"graph input {value.name!r} declares shape {dims}: {size:,} bytes, more than "
                                        f"the memory available to feed and run it ({budget:,} bytes)")


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names GRAPH (a subgraph) reads from enclosing scopes: used, and not defined inside."""
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(node.output)
        used.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                used |= _outer_names(sub)
    return used - defined


def _check_topology(graph: onnx.GraphProto, scope: str) -> None:
    """No tensor written twice, no cycle (Kahn's algorithm; a subgraph's outer-scope reads count as inputs
    of its node); subgraphs the same, each in its own scope."""
    writer = {v.name: "a graph input" for v in graph.input}
    writer.update({i.name: "an initializer" for i in graph.initializer})
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue  # an omitted optional output
            if name in writer:
                raise ModelLoadError(f"{scope}tensor {name!r} is written by {writer[name]} and by "
                                     f"{node.op_type} node {node.name!r}")
            writer[name] = f"{node.op_type} node {node.name!r}"
    producer = {name: k for k, node in enumerate(graph.node) for name in node.output if name}
    users: list[list[int]] = [[] for _ in graph.node]
    waiting = [0] * len(graph.node)
    for k, node in enumerate(graph.node):
        reads = set(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _check_topology(sub, f"{scope}{node.op_type} node {node.name!r}'s {attribute.name}: ")
                reads |= _outer_names(sub)
        for source in {producer[name] for name in reads if name in producer}:
            users[source].append(k)
            waiting[k] += 1
    ready = [k for k, count in enumerate(waiting) if count == 0]
    for k in ready:  # the list grows while it is walked
        for user in users[k]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(ready) < len(graph.node):
        stuck = next(node for k, node in enumerate(graph.node) if waiting[k])
        raise ModelLoadError(f"{scope}the graph has a cycle through {stuck.op_type} node {stuck.name!r}")


def _check_functions(model: onnx.ModelProto) -> None:
    """Local functions may call each other, never (through others) themselves."""
    functions = {(f.domain, f.name): f for f in model.functions}
    calls = {key: {(n.domain, n.op_type) for n in f.node} & functions.keys() for key, f in functions.items()}
    state: dict[tuple, int] = {}  # 1: on the current path, 2: done

    def visit(key: tuple) -> None:
        stack = [(key, iter(sorted(calls[key])))]
        state[key] = 1
        while stack:  # iterative depth-first search: a chain of many functions cannot overflow the stack
            current, callees = stack[-1]
            callee = next(callees, None)
            if callee is None:
                state[current] = 2
                stack.pop()
            elif state.get(callee) == 1:
                raise ModelLoadError(f"local function {callee[1]!r} ({callee[0] or 'ai.onnx'}) calls itself")
            elif callee not in state:
                state[callee] = 1
                stack.append((callee, iter(sorted(calls[callee]))))

    for key in sorted(functions):
        if key not in state:
            visit(key)


def _check_text(model: onnx.ModelProto) -> None:
    """Every string field (names, op types, domains, dim params, metadata) must be valid UTF-8: protobuf hands
    an invalid one back as bytes, which breaks every name lookup and the export much later."""
    from google.protobuf.descriptor import FieldDescriptor

    stack: list = [model]
    while stack:  # iterative: nested subgraphs cannot overflow the Python stack
        message = stack.pop()
        if isinstance(message, TensorProto):  # its names only: ListFields would copy every weight's raw_data
            for text in (message.name, message.doc_string, *(e.key for e in message.external_data),
                         *(e.value for e in message.external_data)):
                if isinstance(text, bytes):
                    raise ModelLoadError(f"tensor name or external data entry {text[:40]!r} is not valid UTF-8")
            continue
        for field, value in message.ListFields():
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            values = value if repeated else [value]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend(values)
            elif field.type == FieldDescriptor.TYPE_STRING:
                bad = next((v for v in values if isinstance(v, bytes)), None)
                if bad is not None:
                    raise ModelLoadError(f"{type(message).__name__}.{field.name} {bad[:40]!r} is not valid UTF-8")


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    attribute = next((a for a in node.attribute if a.name == name), None)
    if attribute is None:
        return None
    return list(attribute.ints) if attribute.type == onnx.AttributeProto.INTS else [attribute.i]


def _check_attributes(graph: onnx.GraphProto, scope: str) -> None:
    """The attributes the channel analysis computes with: a Transpose's perm must be a permutation, a Conv's
    group, strides and dilations positive (no index lookups or divisions that fail deep inside)."""
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        what = f"{scope}{node.op_type} node {node.name!r}"
        perm = _ints(node, "perm") if node.op_type == "Transpose" else None
        if perm is not None and sorted(perm) != list(range(len(perm))):
            raise ModelLoadError(f"{what}: perm {perm[:10]} is not a permutation")
        if node.op_type in ("Conv", "ConvTranspose"):
            for name in ("group", "strides", "dilations"):
                values = _ints(node, name)
                if values is not None and not all(v >= 1 for v in values):
                    raise ModelLoadError(f"{what}: {name} {values[:10]} must be positive")


def _graphs(graph: onnx.GraphProto, scope: str = ""):
    """GRAPH and every subgraph in it, with a scope prefix for messages."""
    yield graph, scope
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(sub, f"{scope}{node.op_type} node {node.name!r}'s {attribute.name}: ")


def validate_model(model: onnx.ModelProto) -> None:
    """Raise ModelLoadError / UnsupportedModelError for what onnxdepth must not analyse (module docstring)."""
    _check_text(model)
    for graph, scope in _graphs(model.graph):
        _check_tensors(graph, scope)
        _check_layer_weights(graph)
        _check_attributes(graph, scope)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    check_tensor(attribute.t, f"local function {function.name!r}'s {node.op_type} attribute")
    _check_inputs(model)
    _check_topology(model.graph, "")
    _check_functions(model)
