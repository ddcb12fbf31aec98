"""Loading ONNX files (with external data) and saving them atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from ..errors import ModelLoadError, OutputWriteError, UnsupportedModelError
from ..fileio import clean_stale, committing, temp_prefix, temporary
from .validate import check_tensor, validate_model
from .external import check_external, check_external_tensor, external_info, external_tensors, folder_of, has_external, mark_folder, resolve, unmark

__all__ = ["load_model", "save_model_atomic", "check_output_path", "stream_tensor"]

logger = logging.getLogger(__name__)

# Protobuf refuses to serialize a single message over 2 GiB; larger models must use external data.
_PROTO_LIMIT = 2**31 - 1 - 2**20


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model; external data stays in its files (checked, and read memory-mapped when used:
    `graph.external`), the folder recorded in the model's metadata.

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
        validate_model(model)  # sizes, names, cycles: before anything is allocated or analysed
        if external_tensors(model):
            # Kept external and read memory-mapped (`graph.external`): never a second copy of the weights.
            check_external(model, path.parent)
    except (ModelLoadError, UnsupportedModelError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    unmark(model)  # a folder recorded in the file itself is not ours to trust
    if external_tensors(model):
        mark_folder(model, path.parent)
    _inline_external_attributes(model, path.parent)
    return model


def _inline_external_attributes(model: onnx.ModelProto, folder: Path) -> None:
    """Read the (small) tensors of Constant-node attributes stored externally into the proto."""
    from onnx.external_data_helper import load_external_data_for_tensor

    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t") and attribute.t.data_location == onnx.TensorProto.EXTERNAL:
                what = f"{node.op_type} node {node.name!r}'s attribute {attribute.name!r}"
                try:
                    check_external_tensor(attribute.t, folder, {})  # inside FOLDER, within its file
                    load_external_data_for_tensor(attribute.t, str(folder))
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(f"cannot read the external data of {what} ({exc})") from exc
                check_tensor(attribute.t, what)  # the bytes read match the declared dims
                attribute.t.data_location = onnx.TensorProto.DEFAULT
                del attribute.t.external_data[:]


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
    clean_stale(out)  # a killed run's leftovers (a running one's are left alone)
    try:  # os.access says yes to root everywhere; only creating a file proves the directory writable
        with tempfile.NamedTemporaryFile(prefix=temp_prefix(out), suffix=".probe", dir=parent):
            pass
    except OSError as exc:
        raise OutputWriteError(f"{out}: directory {parent} is not writable ({exc.strerror or exc})") from exc
    return out


def save_model_atomic(model: onnx.ModelProto, out: str | os.PathLike,
                      check: Callable[[Path], None] | None = None) -> Path:
    """Write MODEL to OUT via a temporary file in the same directory, then rename. CHECK(path), when given,
    runs on the written temporary file before the rename (an exception leaves nothing at OUT).

    A model whose weights are kept external (`graph.external`), or one over the protobuf limit, is written
    with one external data file ``OUT.data`` (`_save_external`)."""
    out = check_output_path(out)
    if folder_of(model) is not None or external_tensors(model) or model.ByteSize() > _PROTO_LIMIT:
        return _save_external(model, out, check)
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        with temporary(tmp):
            onnx.save_model(model, str(tmp))
            if check is not None:
                check(tmp)
            _usual_mode(tmp)
            with committing(out.parent):
                os.replace(tmp, out)
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    logger.info("wrote %s", out)
    return out


def _usual_mode(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual mode


#: Tensors of at least this many bytes go to the data file; smaller ones stay in the proto.
_EXTERNAL_THRESHOLD = 1024
#: Offsets in the data file are aligned to this (pages, so ORT can map each tensor).
_ALIGNMENT = 4096
#: Bytes copied at a time from a source data file.
_CHUNK = 64 << 20


def _save_external(model: onnx.ModelProto, out: Path, check: Callable[[Path], None] | None) -> Path:
    """Write MODEL as OUT + OUT.data, streaming: tensors still referring to their source data file are copied
    from it in chunks, in-memory ones written and their bytes dropped from the proto. Both files are written
    into a hidden temporary folder beside OUT, checked there (CHECK), then renamed into place. MODEL is
    rewritten in place to refer to the new files (it stays a valid, light model of OUT; after a failure it is
    not usable)."""
    data_name = _free_data_name(out)
    source = folder_of(model)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent))
    try:
        with temporary(work):
            with open(work / data_name, "wb") as data:
                for tensor in model.graph.initializer:
                    stream_tensor(tensor, data, source, data_name)
            unmark(model)
            onnx.save_model(model, str(work / out.name))
            if check is not None:
                check(work / out.name)
            for name in (data_name, out.name):
                _usual_mode(work / name)
            with committing(out.parent):  # both renames, or (a --timeout or a signal meanwhile) neither
                # DATA_NAME must be one the OUT now on disk does not use, so that a kill between the two renames
                # leaves the old pair whole (plus an unreferenced data file, removed by the next write to OUT).
                # Another process may have committed since it was chosen: look again under the lock.
                if data_name != _free_data_name(out):
                    data_name = _rename_data(model, work, out.name, data_name, _free_data_name(out))
                os.replace(work / data_name, out.parent / data_name)
                os.replace(work / out.name, out)
                for name in _derived_data_names(out):  # the old OUT's data, and any orphan of a killed write
                    if name != data_name:
                        _remove_file(out.parent / name)
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mark_folder(model, out.parent)
    logger.info("wrote %s and %s", out, data_name)
    return out


def _derived_data_names(out: Path) -> tuple[str, str]:
    """The names OUT's external data file may have: ``OUT.data``, or ``OUT.1.data`` when the OUT now on disk
    uses ``OUT.data`` (each write takes the one the current OUT does not use, so the old pair stays whole
    until the new OUT replaces it)."""
    return out.name + ".data", out.name + ".1.data"


def _free_data_name(out: Path) -> str:
    """The first of `_derived_data_names` that the OUT now on disk does not refer to."""
    used = _data_names_of(out)
    return next(name for name in _derived_data_names(out) if name not in used)


def _rename_data(model: onnx.ModelProto, work: Path, model_name: str, old: str, new: str) -> str:
    """Rename WORK's data file OLD to NEW and rewrite the (light) model file MODEL_NAME there to refer to it."""
    os.rename(work / old, work / new)
    for tensor in external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = new
    onnx.save_model(model, str(work / model_name))
    _usual_mode(work / model_name)
    return new


def _data_names_of(out: Path) -> set[str]:
    """The external data files the model now at OUT refers to (none when OUT is absent or not ONNX)."""
    if not out.is_file():
        return set()
    try:
        light = onnx.load(str(out), load_external_data=False)
        return {external_info(tensor)[0] for tensor in external_tensors(light)}
    except Exception:  # a broken or foreign file at OUT is simply replaced; it refers to nothing of ours
        return set()


def _remove_file(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # the new pair is in place; a leftover old data file is only wasted space
        logger.warning("could not remove the previous data file %s (%s)", path, exc.strerror or exc)


def stream_tensor(tensor: onnx.TensorProto, data, source: str | None, data_name: str) -> None:
    """Append TENSOR's bytes to DATA (aligned) and point TENSOR at them; small inline tensors stay inline."""
    if has_external(tensor):
        location, offset, length = external_info(tensor)
        path = resolve(source or ".", location, tensor.name)
        length = length if length is not None else path.stat().st_size - offset
        start = _align(data)
        with open(path, "rb") as src:
            src.seek(offset)
            left = length
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise OutputWriteError(f"external data of {tensor.name!r} ends early in {location}")
                data.write(chunk)
                left -= len(chunk)
    else:
        payload = _inline_bytes(tensor)
        if payload is None or len(payload) < _EXTERNAL_THRESHOLD:
            return
        start = _align(data)
        data.write(payload)
        length = len(payload)
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", data_name), ("offset", str(start)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _inline_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """TENSOR's little-endian bytes as external data stores them (None: strings, left inline)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()


def _align(data) -> int:
    """Pad DATA with zeros to the next multiple of _ALIGNMENT; the new position."""
    position = data.tell()
    pad = -position % _ALIGNMENT
    if pad:
        data.write(b"\0" * pad)
    return position + pad
