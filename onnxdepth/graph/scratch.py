"""Scratch folders for one command's working files (a dequantized model's float weights), removed at exit.

They live under TMPDIR (the system's temporary directory), are registered with `fileio` so that an interrupted
command removes them too, and are removed when the process exits. A process that is killed outright leaves
them behind, under their `onnxdepth-` prefix.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from ..fileio import temporary

__all__ = ["scratch_folder"]

#: This process's scratch folders and their `fileio.temporary` registrations.
_FOLDERS: list[tuple[Path, object]] = []


def scratch_folder(prefix: str) -> Path:
    """A new empty folder under TMPDIR named PREFIX + a random suffix, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    registration = temporary(folder)
    registration.__enter__()  # `fileio.remove_temporaries` (an interrupt, a --timeout) removes it as well
    _FOLDERS.append((folder, registration))
    return folder


@atexit.register
def _remove_all() -> None:
    for folder, registration in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
        registration.__exit__(None, None, None)
    _FOLDERS.clear()
