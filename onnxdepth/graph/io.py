"""Loading ONNX files (with external data) and saving them atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx

from ..errors import ModelLoadError, OutputWriteError

__all__ = ["load_model", "save_model_atomic", "check_output_path"]

logger = logging.getLogger(__name__)

# Protobuf refuses to serialize a single message over 2 GiB; larger models must use external data.
_PROTO_LIMIT = 2**31 - 1 - 2**20


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model, resolving external data next to it.

    Raises:
        ModelLoadError: the file is missing, not ONNX, truncated, or its external data is missing.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"{path}: not a valid ONNX file ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not a valid ONNX file (empty or truncated graph)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing: {exc.filename}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read external data ({exc})") from exc
    for init in model.graph.initializer:
        # A truncated raw_data field parses but has the wrong byte count; catch it here, not in ORT.
        if init.HasField("raw_data") and init.data_type in _ITEMSIZE:
            expected = _ITEMSIZE[init.data_type]
            for dim in init.dims:
                expected *= dim
            if len(init.raw_data) != expected:
                raise ModelLoadError(
                    f"{path}: initializer {init.name!r} has {len(init.raw_data)} bytes, expected {expected}"
                    " (truncated file?)"
                )
    return model


_ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
}


def check_output_path(out: str | os.PathLike, src: str | os.PathLike | None = None) -> Path:
    """Validate OUT before any work is done: not IN, parent exists and is writable."""
    out = Path(out)
    if src is not None and Path(src).resolve() == out.resolve():
        raise OutputWriteError(f"{out}: output path equals the input path; choose another file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputWriteError(f"{out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputWriteError(f"{out}: directory {parent} is not writable")
    if out.is_dir():
        raise OutputWriteError(f"{out}: is a directory")
    try:  # os.access says yes to root everywhere; only creating a file proves the directory writable
        with tempfile.NamedTemporaryFile(prefix=f".{out.name}.", suffix=".probe", dir=parent):
            pass
    except OSError as exc:
        raise OutputWriteError(f"{out}: directory {parent} is not writable ({exc.strerror or exc})") from exc
    return out


def save_model_atomic(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Write MODEL to OUT via a temporary file in the same directory, then rename.

    Models over the protobuf limit are written with one external data file ``OUT.data``.
    """
    out = check_output_path(out)
    external = model.ByteSize() > _PROTO_LIMIT
    data_name = out.name + ".data"
    tmp_data = out.parent / f".{data_name}.tmp"
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            os.replace(tmp_data, out.parent / data_name)
            # The .onnx refers to its data file by name; rewrite the location to the final name.
            fixed = onnx.load(str(tmp), load_external_data=False)
            for init in fixed.graph.initializer:
                for entry in init.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(fixed, str(tmp))
        else:
            onnx.save_model(model, str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    finally:
        for leftover in (tmp, tmp_data):
            if leftover is not None and leftover.exists():
                leftover.unlink()
    logger.info("wrote %s", out)
    return out
