"""Static shapes for the analysis: ONNX shape inference on a copy whose symbolic input dims are fixed."""

from __future__ import annotations

import logging

import onnx

__all__ = ["infer_static_shapes", "concrete_input_shapes"]

logger = logging.getLogger(__name__)

# A symbolic dim is fixed to 1 on axis 0 (batch) and to this size elsewhere (spatial / sequence).
DEFAULT_DYNAMIC_SIZE = 64


def concrete_input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
                          ) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input: OVERRIDES first, then static dims, symbolic ones filled in."""
    overrides = overrides or {}
    init_names = {i.name for i in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        if value.name in init_names:
            continue
        if value.name in overrides:
            shapes[value.name] = tuple(overrides[value.name])
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if k == 0 else DEFAULT_DYNAMIC_SIZE)
            for k, d in enumerate(dims)
        )
    return shapes


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
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
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
