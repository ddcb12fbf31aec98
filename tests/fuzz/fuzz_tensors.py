"""Structural fuzz families on tensors and shapes: initializers shadowing inputs, wrong dtypes, zero-size,
negative, huge (10**12) and symbolic (`9**9**9**9`) dims, huge declared initializers with no or short data,
external data that is huge, missing, truncated, outside the folder or unparsable. A mutation returns the
extra files the case needs (external data), or None."""

from __future__ import annotations

import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["TENSOR_MUTATIONS", "to_external"]

_HUGE = 10**12


def _weight(rng: random.Random, model: onnx.ModelProto) -> onnx.TensorProto:
    """A random initializer of rank >= 2 (a layer's weight), else any initializer."""
    inits = list(model.graph.initializer)
    return rng.choice([t for t in inits if len(t.dims) >= 2] or inits)


def _input_dims(rng: random.Random, model: onnx.ModelProto):
    return model.graph.input[0].type.tensor_type.shape.dim


def shadow_input(rng, model):
    """An initializer named like the graph input (a default value), or a graph input named like a weight."""
    if rng.random() < 0.5:
        shape = rng.choice([[1], [2, 16], [1, 3, 16, 16], [1, 8, 16], [0]])
        model.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), model.graph.input[0].name))
    else:
        weight = _weight(rng, model)
        model.graph.input.append(helper.make_tensor_value_info(
            weight.name, rng.choice([TensorProto.FLOAT, TensorProto.INT8]), rng.choice([list(weight.dims), [3], None])))


def wrong_dtype(rng, model):
    """A weight re-encoded as another type (int8 into a float MatMul), or given an unknown type number."""
    weight = _weight(rng, model)
    values = numpy_helper.to_array(weight)
    choice = rng.choice(["int8", "int64", "float16", "float64", "bool", "uint8", "bad_enum", "string", "bfloat16"])
    if choice == "bad_enum":
        weight.data_type = rng.choice([0, 99, 26, 2**30])
    elif choice == "string":
        weight.CopyFrom(helper.make_tensor(weight.name, TensorProto.STRING, list(weight.dims),
                                           [b"w"] * int(values.size)))
    elif choice == "bfloat16":
        weight.data_type = TensorProto.BFLOAT16  # 4 bytes per value where 2 are expected
    else:
        weight.CopyFrom(numpy_helper.from_array(values.astype(choice), weight.name))


def zero_dim(rng, model):
    if rng.random() < 0.5:
        dims = _input_dims(rng, model)
        dims[rng.randrange(len(dims))].dim_value = 0
    else:
        weight = _weight(rng, model)
        shape = list(weight.dims)
        shape[rng.randrange(len(shape))] = 0
        weight.CopyFrom(numpy_helper.from_array(np.zeros(shape, np.float32), weight.name))


def negative_dim(rng, model):
    if rng.random() < 0.5:
        dims = _input_dims(rng, model)
        dims[rng.randrange(len(dims))].dim_value = rng.choice([-1, -7, -_HUGE])
    else:
        weight = _weight(rng, model)
        count = len(weight.dims)
        weight.dims[rng.randrange(count)] = -weight.dims[rng.randrange(count)]


def huge_dim(rng, model):
    """Declared input (or output) dims of 10**12 and more: nothing may allocate them."""
    value = model.graph.input[0] if rng.random() < 0.8 else model.graph.output[0]
    dims = value.type.tensor_type.shape.dim
    if not dims:
        dims.add()
    for d in rng.sample(list(dims), rng.randint(1, len(dims))):
        d.Clear()
        d.dim_value = rng.choice([_HUGE, 2**62, 2**63 - 1, 10**9])


_SYMBOLS = ["9**9**9**9", "a" * 10000, "(((((", "batch+", "2*" * 60 + "2", "99999999999*99999999999", "-5",
            "N-100", "0", "1e9", "9" * 400, "s*s*s*s*s*s*s*s*s*s", "", "\u00e9\u4e2d", "x - x"]


def symbolic_dim(rng, model):
    dims = _input_dims(rng, model)
    for d in rng.sample(list(dims), rng.randint(1, len(dims))):
        d.Clear()
        d.dim_param = rng.choice(_SYMBOLS)


def huge_initializer(rng, model):
    """A weight declared [10**6, 10**6] (or larger) with no data, a few values, or a few raw bytes."""
    weight = _weight(rng, model)
    name = weight.name
    weight.Clear()
    weight.name, weight.data_type = name, TensorProto.FLOAT
    weight.dims.extend(rng.choice([[10**6, 10**6], [2**62, 4], [_HUGE], [10**6, 10**6, 10**6]]))
    fill = rng.choice(["none", "float_data", "raw", "external"])
    if fill == "float_data":
        weight.float_data.extend([1.0] * 10)
    elif fill == "raw":
        weight.raw_data = b"\0" * 64
    elif fill == "external":
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "in.onnx.data"), ("offset", "0"), ("length", str(4 * 10**12))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        return {"in.onnx.data": b"\0" * 4096}
    return None


def dims_mismatch(rng, model):
    """A weight whose dims no longer match its bytes (doubled, swapped, or one more axis)."""
    weight = _weight(rng, model)
    dims = list(weight.dims)
    choice = rng.choice(["double", "swap", "extra"])
    new = [dims[0] * 2, *dims[1:]] if choice == "double" else dims[::-1] if choice == "swap" else dims + [1]
    del weight.dims[:]
    weight.dims.extend(new)


def duplicate_initializer(rng, model):
    weight = _weight(rng, model)
    model.graph.initializer.append(numpy_helper.from_array(np.ones([3], np.float32), weight.name))


def sparse_initializer(rng, model):
    """A weight moved to sparse_initializer (values and indices; sometimes out-of-range indices)."""
    weight = _weight(rng, model)
    dense = numpy_helper.to_array(weight).ravel()
    limit = dense.size * (1000 if rng.random() < 0.3 else 1)
    indices = np.array(sorted(rng.sample(range(limit), 4)), np.int64)
    values = numpy_helper.from_array(np.ones(4, np.float32), weight.name)
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(indices, weight.name + "_idx"), list(weight.dims))
    model.graph.sparse_initializer.append(sparse)
    model.graph.initializer.remove(weight)


def constant_node(rng, model):
    """A weight moved into a Constant node, sometimes declared huge with no data."""
    weight = _weight(rng, model)
    value = onnx.TensorProto()
    value.CopyFrom(weight)
    if rng.random() < 0.5:
        del value.dims[:]
        value.dims.extend([10**6, 10**6])
    model.graph.initializer.remove(weight)
    model.graph.node.insert(0, helper.make_node("Constant", [], [weight.name], name=f"const_{weight.name}", value=value))


def to_external(model: onnx.ModelProto, location: str = "in.onnx.data") -> bytes:
    """Move every initializer of MODEL to one external data blob (returned), as onnx would lay it out."""
    blob = bytearray()
    for tensor in model.graph.initializer:
        payload = numpy_helper.to_array(tensor).tobytes()
        offset = len(blob)
        blob += payload
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(payload)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return bytes(blob)


_EXTERNAL_LIES = [("length", str(10**15)), ("offset", str(10**15)), ("length", "-5"), ("offset", "abc"),
                  ("location", "../../etc/passwd"), ("location", "/etc/passwd"), ("location", "missing.data"),
                  ("location", ""), ("length", "1e3"), ("checksum", "x"), ("offset", "-4096"), ("location", "in.onnx")]


def external_data(rng, model):
    """Weights in in.onnx.data, then one reference lies (length, offset, location), or the file is cut short."""
    blob = to_external(model)
    if rng.random() < 0.25:
        return {"in.onnx.data": blob[:rng.randrange(len(blob))]}
    tensor = _weight(rng, model)
    key, value = rng.choice(_EXTERNAL_LIES)
    entries = {e.key: e.value for e in tensor.external_data}
    entries[key] = value
    del tensor.external_data[:]
    for k, v in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    return {"in.onnx.data": blob}


TENSOR_MUTATIONS = {fn.__name__: fn for fn in (
    shadow_input, wrong_dtype, zero_dim, negative_dim, huge_dim, symbolic_dim, huge_initializer, dims_mismatch,
    duplicate_initializer, sparse_initializer, constant_node, external_data)}
