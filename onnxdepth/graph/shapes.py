"""Static shapes for the analysis: ONNX shape inference on a copy whose symbolic input dims are fixed."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile

import onnx

from .contrib import has_contrib_ops, implied_dims

__all__ = ["infer_static_shapes", "concrete_input_shapes"]

logger = logging.getLogger(__name__)

# A symbolic dim is fixed to 1 on axis 0 (batch) and to this size elsewhere (spatial / sequence).
DEFAULT_DYNAMIC_SIZE = 64


def concrete_input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
                          ) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input: OVERRIDES first, then static dims, symbolic ones filled in."""
    overrides = overrides or {}
    init_names = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init_names]
    # One value per symbolic dim name, so that inputs sharing a dim agree (batch 1 when the name is ever
    # used on axis 0); names in overrides' inputs are taken from there. Expressions such as
    # "past_sequence_length + sequence_length" (a KV-cache attention mask) are evaluated from them.
    values: dict[str, int] = {}
    for value in inputs:
        if value.name in overrides:
            for d, size in zip(value.type.tensor_type.shape.dim, overrides[value.name]):
                if d.dim_param and _NAME.fullmatch(d.dim_param):
                    values[d.dim_param] = int(size)
    for name, size in _declared_image_dims(model, inputs).items():
        values.setdefault(name, size)
    for name, size in implied_dims(model).items():  # e.g. a fused attention's KV-cache head size
        values.setdefault(name, size)
    fixed = set(values)
    for value in inputs:
        for k, d in enumerate(value.type.tensor_type.shape.dim):
            if d.dim_param and _NAME.fullmatch(d.dim_param) and d.dim_param not in fixed:
                size = 1 if k == 0 else DEFAULT_DYNAMIC_SIZE
                values[d.dim_param] = min(values.get(d.dim_param, size), size)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        if value.name in overrides:
            shapes[value.name] = tuple(overrides[value.name])
            continue
        dims = []
        for k, d in enumerate(value.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif d.dim_param and d.dim_param in values:
                dims.append(values[d.dim_param])
            elif d.dim_param and (size := dim_expression(d.dim_param, values)) is not None:
                dims.append(size)
            else:
                if d.dim_param and not _NAME.fullmatch(d.dim_param):
                    logger.warning("input %s: dimension %r is not a sum of products of names and integers within "
                                   "bounds; using %d", value.name, d.dim_param[:60],
                                   1 if k == 0 else DEFAULT_DYNAMIC_SIZE)
                dims.append(1 if k == 0 else DEFAULT_DYNAMIC_SIZE)
        shapes[value.name] = tuple(dims)
    return shapes


def _declared_image_dims(model: onnx.ModelProto, inputs: list) -> dict[str, int]:
    """The symbolic height and width of an image input [batch, 3, H, W] set to the image size the model
    declares in its metadata (`imgsz`: "[320, 320]" or "640", as ultralytics exports write it)."""
    declared = next((p.value for p in model.metadata_props if p.key == "imgsz"), None)
    # At most 6 digits a number: int() of a 5,000-digit metadata value raises (and no image is that large).
    sizes = [int(n) for n in re.findall(r"\d{1,6}", (declared or "")[:100])[:2]]
    if not sizes or not all(0 < n <= 8192 for n in sizes):
        return {}
    height, width = sizes if len(sizes) == 2 else sizes * 2
    dims: dict[str, int] = {}
    for value in inputs:
        shape = value.type.tensor_type.shape.dim
        # Axes 1, 2, 3 of an image input: colour channels, height, width.
        if len(shape) == 4 and shape[1].dim_value == 3:
            for axis, size in ((2, height), (3, width)):
                if shape[axis].dim_param and _NAME.fullmatch(shape[axis].dim_param):
                    dims[shape[axis].dim_param] = size
    return dims


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
#: One token of a dimension expression: an integer (at most 12 digits), a dim name, or an operator.
_TOKEN = re.compile(r"\s*(?:(\d{1,12})|([A-Za-z_][A-Za-z0-9_.]*)|([+*-]))")
#: Largest dimension an expression may evaluate to (and bound of every intermediate product).
MAX_DIM = 1 << 31
#: Longest expression parsed (a model file could hold megabytes there).
MAX_EXPRESSION = 200


def dim_expression(text: str, values: dict[str, int]) -> int | None:
    """The value of a symbolic dimension such as "past_sequence_length + sequence_length" or "2*batch", names
    taken from VALUES (else DEFAULT_DYNAMIC_SIZE): sums and differences of products of names and integers,
    nothing else (no powers, no parentheses). None when TEXT is not such an expression, is too long, or any
    product or the result leaves [1, MAX_DIM]. Parsed by hand: nothing from a model file is ever evaluated."""
    if len(text) > MAX_EXPRESSION:
        return None
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        number, name, operator = match.groups()
        tokens.append(int(number) if number else (values.get(name, DEFAULT_DYNAMIC_SIZE) if name else operator))
        position = match.end()
    total, sign, product, expect_factor = 0, 1, 1, True
    for token in tokens + ["+"]:
        if expect_factor:
            if isinstance(token, str):
                return None  # an operator where a name or an integer must be (e.g. "9**9")
            product *= token
            if product > MAX_DIM:
                return None
            expect_factor = False
        elif token == "*":
            expect_factor = True
        else:  # "+" or "-" closes a term
            total += sign * product
            if abs(total) > MAX_DIM:
                return None
            sign, product, expect_factor = (1 if token == "+" else -1), 1, True
    return total if 1 <= total <= MAX_DIM else None


def infer_static_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    """Shape of every value in MODEL when its inputs have INPUT_SHAPES (None for unknown dims)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in input_shapes[value.name]:
                dims.add().dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        inferred = _infer(fixed)
    except Exception as exc:  # inference is best effort; the analysis blocks what it cannot prove
        logger.warning("shape inference failed (%s); continuing with declared shapes", exc)
        inferred = fixed
    shapes: dict[str, tuple] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                   for d in value.type.tensor_type.shape.dim)
    return shapes


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference; for graphs with ONNX Runtime's fused ops (GroupQueryAttention, MatMulNBits, ...),
    which onnx cannot see through, ONNX Runtime's own symbolic shape inference, which knows them."""
    if has_contrib_ops(model):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with _scratch_directory():  # where ORT drops its debug copy when inference stays incomplete
            inferred = SymbolicShapeInference.infer_shapes(_declared_external(model), auto_merge=True)
        if inferred is None:  # ORT's answer for opset < 7
            raise ValueError("ONNX Runtime's symbolic shape inference needs opset 7 or later")
        return inferred
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


@contextlib.contextmanager
def _scratch_directory():
    """Run the block in a fresh temporary working directory, removed afterwards: ONNX Runtime's symbolic shape
    inference saves `sym_shape_infer_temp.onnx` and a `<uuid>.data` into the working directory whenever it
    cannot infer every shape, and leaves them there."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="onnxdepth-shapes-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def _declared_external(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL (changed in place: a copy made for inference) with each external-data initializer declared as a graph
    input of its type and shape instead: shape inference needs their shapes, never their bytes (which it would
    otherwise try to read relative to the working directory)."""
    external = [i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return model
    names = {i.name for i in external}
    kept = [i for i in model.graph.initializer if i.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in external)
    return model
