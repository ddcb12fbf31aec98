"""Models with external data, kept external: tensors are read memory-mapped, never loaded into the proto.

A model whose weights live in external data files (every model over protobuf's 2 GB, and many smaller
ones) is loaded without them (`load_model`): each initializer keeps its `external_data` reference (file,
offset, length) and the model records the absolute folder those names are relative to in its metadata
(`EXTERNAL_DIR_KEY`, stripped again when a model is written). Then:

- the pruning session's constants read their values as read-only `numpy.memmap` views of the file
  (`ExternalValues`), so planning and importance touch a tensor's pages only while they use it, and an
  untouched tensor exports as the same reference: nothing is copied until the output is written;
- ONNX Runtime opens such a proto from its (small) serialization with the folder as its external-data
  folder (`ort_folder`);
- the writer (`io.save_model_atomic`) streams every tensor into one new data file beside OUT, copying
  referenced byte ranges from the source file in chunks.

onnx's own helpers cannot do this: `numpy_helper.to_array` refuses absolute locations and reads relative to
the working directory, and `onnx.save_model(..., save_as_external_data=True)` needs every tensor's bytes in
memory (the 2x the brief forbids).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import ModelLoadError

__all__ = ["EXTERNAL_DIR_KEY", "model_bytes", "ExternalValues", "check_external", "check_external_tensor", "external_info", "external_tensors", "folder_of", "has_external",
           "mark_folder", "read_tensor", "swap_external_values", "unmark"]

#: Metadata key holding the absolute folder a lazily loaded model's external data names are relative to.
EXTERNAL_DIR_KEY = "onnxdepth.external_dir"

_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
          onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16,
          onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
          onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_}


def has_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """MODEL's initializers stored in external data (Constant-node attributes are not looked at)."""
    return [t for t in model.graph.initializer if has_external(t)]


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of an external TENSOR."""
    entries = {e.key: e.value for e in tensor.external_data}
    offset, length = (_byte_count(tensor, entries, key) for key in ("offset", "length"))
    return entries.get("location", ""), offset or 0, length


def _byte_count(tensor: onnx.TensorProto, entries: dict[str, str], key: str) -> int | None:
    """The external-data entry KEY ("offset", "length") as a non-negative integer; None when absent."""
    text = entries.get(key)
    if not text:
        return None
    if not text.isdigit() or len(text) > 20:  # digits only: no sign, no "1e3", no 10**1000-digit numbers
        raise ModelLoadError(f"initializer {tensor.name!r}: external data {key} {text[:40]!r} is not a byte count")
    return int(text)


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    dtype = _NUMPY.get(tensor.data_type)
    if dtype is None:
        return None
    return math.prod(tensor.dims) * np.dtype(dtype).itemsize  # Python integers: no int64 overflow


def folder_of(model: onnx.ModelProto) -> str | None:
    """The external-data folder recorded in MODEL's metadata (None: the model holds its data itself)."""
    for prop in model.metadata_props:
        if prop.key == EXTERNAL_DIR_KEY:
            return prop.value
    return None


def mark_folder(model: onnx.ModelProto, folder: str | os.PathLike) -> None:
    unmark(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = EXTERNAL_DIR_KEY, str(Path(folder).resolve())


def unmark(model: onnx.ModelProto) -> None:
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != EXTERNAL_DIR_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def resolve(folder: str, location: str, name: str) -> Path:
    """The file behind LOCATION, which must stay inside FOLDER (no absolute paths, no escaping with '..')."""
    base = Path(folder).resolve()
    if not location or os.path.isabs(location):
        raise ModelLoadError(f"initializer {name!r}: external data location {location!r} must be a relative path")
    path = (base / location).resolve()
    if base not in path.parents:
        raise ModelLoadError(f"initializer {name!r}: external data location {location!r} leaves the model folder")
    return path


def check_external(model: onnx.ModelProto, folder: str | os.PathLike) -> None:
    """Raise ModelLoadError unless every external tensor of MODEL lies inside an existing file under FOLDER
    with as many bytes as its shape and type need."""
    sizes: dict[Path, int] = {}
    for tensor in external_tensors(model):
        check_external_tensor(tensor, folder, sizes)


def check_external_tensor(tensor: onnx.TensorProto, folder: str | os.PathLike, sizes: dict[Path, int]) -> None:
    """check_external for one TENSOR; SIZES caches the sizes of the files already seen."""
    location, offset, length = external_info(tensor)
    path = resolve(str(folder), location, tensor.name)
    if path not in sizes:
        if not path.is_file():
            raise ModelLoadError(f"external data file missing: {location}")
        sizes[path] = path.stat().st_size
    expected = _expected_bytes(tensor)
    need = length if length is not None else expected
    if expected is not None and length is not None and length != expected:
        raise ModelLoadError(f"initializer {tensor.name!r}: external data length {length} bytes, expected "
                             f"{expected}")
    # Checked against the file before anything is mapped or read: a declared 10**12-value tensor stops here.
    if need is not None and offset + need > sizes[path]:
        raise ModelLoadError(f"initializer {tensor.name!r}: external data runs past the end of {location} "
                             "(truncated file?)")


def read_tensor(tensor: onnx.TensorProto, folder: str) -> np.ndarray:
    """TENSOR's values: a read-only memory map of its bytes in the external file under FOLDER (numeric types),
    else read through onnx."""
    location, offset, _ = external_info(tensor)
    path = resolve(folder, location, tensor.name)
    dtype = _NUMPY.get(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    if dtype is None:
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor, base_dir=str(path.parent))  # rare types: onnx decodes them
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class ExternalValues(LazyValues):
    """graph-surgeon lazy values of an external tensor: loads as a memory map, exports as the same reference."""

    def __init__(self, tensor: onnx.TensorProto, folder: str):
        super().__init__(tensor)
        self.folder = folder

    def load(self) -> np.ndarray:
        return read_tensor(self.tensor, self.folder)


def swap_external_values(graph, folder: str) -> None:
    """Make GRAPH's constants of external tensors read from FOLDER (graph-surgeon would read from the working
    directory)."""
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        if isinstance(values, LazyValues) and not isinstance(values, ExternalValues) and has_external(values.tensor):
            tensor._values = ExternalValues(values.tensor, folder)


def model_bytes(path: str | os.PathLike, model: onnx.ModelProto) -> int:
    """Bytes of the model file at PATH plus every distinct external data file its initializers refer to."""
    path = Path(path)
    files = {resolve(str(path.parent), external_info(t)[0], t.name) for t in external_tensors(model)}
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())
