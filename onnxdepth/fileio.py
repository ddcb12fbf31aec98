"""Atomic file writes: a temporary file in the target's directory, then os.replace.

An interrupted command (Ctrl-C, a crash, a full disk) leaves either the old file or the new one, never
a half-written file, and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import OutputWriteError

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write DATA (text as UTF-8) to PATH atomically; the file gets the usual umask permissions."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        umask = os.umask(0)  # mkstemp creates 0600; give the file what open() would have
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputWriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:  # also on KeyboardInterrupt: no temporary file is left behind
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write DATA as indented JSON (one trailing newline) to PATH atomically."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")
