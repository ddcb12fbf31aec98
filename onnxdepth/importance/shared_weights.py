"""One copy of a model's large weights for the many cut-out sessions of a scoring chain.

Every cut-out layer of an LM export reads the embedding table (the exporter derives the causal mask from the
embedding's output shape), and ONNX Runtime keeps an inline initializer's bytes for the whole life of each
session, even when an OrtValue is passed in its place with ``add_initializer`` (measured: 110 MiB more per
session for SmolLM2's 49152 x 576 embedding, 3.3 GiB for its 30 layer sessions). Initializers stored as
external data it maps from the file instead, shared by every session. So the large inline initializers are
written once to a temporary data file, and each cut-out's copies of them are pointed there before its session
is made. A model whose weights are already external (`graph.external`) needs none of this.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np
import onnx
from onnx import numpy_helper

from ..fileio import temporary
from ..graph.external import folder_of, has_external, mark_folder
from ..runtime import open_session

__all__ = ["SharedWeights"]

#: Offsets in the data file are aligned to pages, so ORT can map each tensor.
_ALIGNMENT = 4096
_DATA_NAME = "shared.data"


class SharedWeights:
    """MODEL's inline initializers of MIN_ELEMENTS or more, in a temporary data file removed with this object
    (or by an interrupted command's cleanup); `session` opens a cut-out of MODEL reading them from there."""

    def __init__(self, model: onnx.ModelProto, min_elements: int = 1 << 22):
        self.entries: dict[str, tuple[int, int]] = {}  # name -> (offset, length) in the data file
        self.folder = None
        large = [t for t in model.graph.initializer
                 if not has_external(t) and int(np.prod(t.dims)) >= min_elements and t.data_type != onnx.TensorProto.STRING]
        if folder_of(model) is not None or not large:
            return
        self.folder = tempfile.mkdtemp(prefix="onnxdepth-shared-")
        self._registration = temporary(self.folder)
        self._registration.__enter__()  # an interrupted command removes the folder (`fileio.remove_temporaries`)
        self._finalizer = weakref.finalize(self, _remove, self.folder, self._registration)
        with open(os.path.join(self.folder, _DATA_NAME), "wb") as data:
            for tensor in large:
                data.seek(-(-data.tell() // _ALIGNMENT) * _ALIGNMENT)  # the next page boundary
                payload = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                self.entries[tensor.name] = (data.tell(), len(payload))
                data.write(payload)

    def session(self, sub: onnx.ModelProto, threads: int | None):
        """An ORT session of SUB (a cut-out of the model, changed in place: its copies of the shared
        initializers lose their bytes and refer to the data file)."""
        shared = [t for t in sub.graph.initializer if t.name in self.entries and not has_external(t)]
        for tensor in shared:
            offset, length = self.entries[tensor.name]
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
            for key, value in (("location", _DATA_NAME), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
        if shared:
            mark_folder(sub, self.folder)
        return open_session(sub, threads=threads)

    def close(self) -> None:
        self._finalizer() if self.folder is not None else None


def _remove(folder: str, registration) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    registration.__exit__(None, None, None)
