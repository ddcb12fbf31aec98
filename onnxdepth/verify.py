"""Verification of every emitted model: full checker, ONNX Runtime session and run, same signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import ModelLoadError, VerificationError
from .fileio import temp_prefix, temporary
from .graph.contrib import checker_view
from .runtime import first_line, open_session, ort_errors

__all__ = ["signature", "verify_model", "random_feeds", "run_model", "written_file_check"]

_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
             onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
             onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.UINT8: np.uint8}


def signature(model: onnx.ModelProto) -> dict:
    """Graph input and output names with their declared shapes (dim values or symbolic names)."""
    init = {i.name for i in model.graph.initializer}

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]

    return {"inputs": [(v.name, dims(v)) for v in model.graph.input if v.name not in init],
            "outputs": [(v.name, dims(v)) for v in model.graph.output]}


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    init = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in init:
            continue
        dtype = _NP_TYPES.get(value.type.tensor_type.elem_type, np.float32)
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run_model(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """All outputs of MODEL on FEEDS, in a fresh ONNX Runtime CPU session."""
    return open_session(model).run(None, feeds)


def verify_model(model: onnx.ModelProto, reference: onnx.ModelProto, input_shapes: dict, *,
                 run: bool = True, removed: set[str] | None = None, path=None,
                 renamed: dict[str, str] | None = None) -> list[np.ndarray] | None:
    """Raise VerificationError unless MODEL passes the full checker, loads and runs in ONNX Runtime,
    and has REFERENCE's input/output names and shapes (less the REMOVED ones: the past/present KV-cache
    entries of pruned attention blocks). Returns the outputs of the run. PATH: the file MODEL was written
    to, which the checker reads (a model with external data is checked in full only from its files).
    RENAMED: {name in MODEL: name in REFERENCE} of renumbered cache entries (a GenAI folder's decoder)."""
    from .graph.external import folder_of

    try:
        if path is not None:
            _check_file(Path(path))
        elif folder_of(model) is None:  # weights kept external: checked in full from the written file instead
            onnx.checker.check_model(checker_view(model) or model, full_check=True)
    # ValueError: a model over protobuf's 2 GB, which neither the checker nor ONNX Runtime can take in memory
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise VerificationError(f"onnx.checker rejected the pruned model: {first_line(exc)}") from exc
    expected = signature(reference)
    removed = removed or set()
    expected = {key: [entry for entry in entries if entry[0] not in removed] for key, entries in expected.items()}
    renamed = renamed or {}
    actual = {key: [(renamed.get(name, name), dims) for name, dims in entries]
              for key, entries in signature(model).items()}
    if actual != expected:
        raise VerificationError(f"graph signature changed: {expected} -> {actual}")
    if not run:
        return None
    # Outside the try: a bug here is ours, not the model's. A renamed input has its reference name's shape.
    feeds = random_feeds(model, {**input_shapes, **{new: input_shapes[old] for new, old in renamed.items()
                                                    if old in input_shapes}})
    try:
        outputs = run_model(model, feeds)
    except (ModelLoadError, *ort_errors()) as exc:
        cause = exc.__cause__ if isinstance(exc, ModelLoadError) and exc.__cause__ else exc  # ORT's own words
        raise VerificationError(f"ONNX Runtime cannot run the pruned model: {first_line(cause)}") from exc
    ref_outputs = [v.name for v in model.graph.output]
    ref_shapes = _declared_static(reference)
    for name, value in zip(ref_outputs, outputs):
        expected = ref_shapes.get(name)
        if expected is not None and tuple(value.shape) != expected:
            raise VerificationError(f"output {name!r} has shape {value.shape}, expected {expected}")
    return outputs


def _check_file(path: Path) -> None:
    """The full checker on the file at PATH; through `checker_view` (beside PATH, so that its external data
    resolves, removed after) when it holds ONNX Runtime's ONNX-domain ops that onnx does not register."""
    view = checker_view(onnx.load(str(path), load_external_data=False))
    if view is None:
        onnx.checker.check_model(str(path), full_check=True)
        return
    with temporary(path.with_name(f"{temp_prefix(path)}checker.onnx")) as copy:
        try:
            onnx.save(view, str(copy))
            onnx.checker.check_model(str(copy), full_check=True)
        finally:
            copy.unlink(missing_ok=True)


def _declared_static(model: onnx.ModelProto) -> dict:
    shapes = {}
    for v in model.graph.output:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)
    return shapes


def written_file_check(src, plan: dict):
    """The check of a pruned model written with external data, run on its files before they are renamed into
    place (`graph.io.save_model_atomic`): the full checker reads the file, ONNX Runtime loads and runs it, the
    signature is SRC's less PLAN's removed cache entries."""
    from .graph.external import mark_folder
    from .graph.shapes import concrete_input_shapes

    reference = onnx.load(str(src), load_external_data=False)
    shapes = concrete_input_shapes(reference, plan.get("input_shapes"))

    def check(path) -> None:
        written = onnx.load(str(path), load_external_data=False)
        mark_folder(written, path.parent)
        verify_model(written, reference, shapes, removed=set(plan.get("removed_graph_io") or []), path=path,
                     renamed=plan.get("renamed_graph_io"))

    return check
