"""Atomic file writes: a temporary file in the target's directory, then os.replace.

An interrupted command (Ctrl-C, a crash, a full disk) leaves either the old file or the new one, never
a half-written file, and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

from .errors import OutputWriteError

__all__ = ["COMMIT", "clean_stale", "committing", "defer_signal", "remove_temporaries", "temp_prefix", "temporary", "write_atomic",
           "write_json_atomic"]

#: Held while temporaries are renamed into place: an expiring --timeout waits for it, so a commit is whole.
COMMIT = threading.RLock()
#: This process's temporaries now on disk (files or folders), removed by `remove_temporaries` on an expiry.
_TEMPORARIES: set[Path] = set()
#: Every path this process has made temporaries for (`temp_prefix`): `remove_temporaries` also sweeps their
#: folders for names with our prefix, catching one created but not yet registered when a signal came.
_TARGETS: set[Path] = set()
#: Commits now running in the main thread, and the signals that came meanwhile (`committing`, `defer_signal`).
_COMMITS_RUNNING = 0
_DEFERRED: list[int] = []


def defer_signal(signum: int) -> bool:
    """Called by a signal handler (the CLI's): True when a commit is running in the main thread, SIGNUM then
    kept and raised again once the commit is done. (Blocking the signal would not do: ONNX Runtime's threads
    would take it, and Python runs the handler in the main thread all the same.)"""
    if _COMMITS_RUNNING:
        _DEFERRED.append(signum)
        return True
    return False


@contextlib.contextmanager
def committing(folder: str | os.PathLike):
    """Hold while temporaries are renamed into FOLDER: COMMIT (an expiring --timeout waits for it), SIGINT and
    SIGTERM deferred until the renames are done (`defer_signal`: an interrupt between the renames of OUT.data
    and OUT would leave a mismatched pair), and an exclusive flock on FOLDER, so that two processes writing
    the same OUT commit one after the other, never interleaved."""
    global _COMMITS_RUNNING
    in_main = threading.current_thread() is threading.main_thread()
    with COMMIT:
        _COMMITS_RUNNING += in_main
        try:
            fd = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when FD is closed
                yield
            finally:
                os.close(fd)
        finally:
            _COMMITS_RUNNING -= in_main
    if in_main and not _COMMITS_RUNNING and _DEFERRED:
        signum = _DEFERRED[0]
        _DEFERRED.clear()
        signal.raise_signal(signum)  # the handler runs now, after the commit


@contextlib.contextmanager
def temporary(path: str | os.PathLike):
    """Register PATH as one of this process's temporaries while the block runs."""
    path = Path(path)
    _TEMPORARIES.add(path)
    try:
        yield path
    finally:
        _TEMPORARIES.discard(path)


def _remove(path: Path) -> None:
    """Delete the file or folder PATH if it can be (gone meanwhile, or not ours: left as it is)."""
    import shutil

    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError:
        pass


def remove_temporaries() -> None:
    """Delete every registered temporary, and anything else with this process's prefix beside the paths it
    wrote (the --timeout watchdog and an interrupted command call it before ending)."""
    for path in list(_TEMPORARIES):
        _remove(path)
    for target in list(_TARGETS):
        prefix = temp_prefix(target, record=False)
        try:
            entries = list(target.parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith((".tmp", ".probe")):
                _remove(entry)


def temp_prefix(path: str | os.PathLike, record: bool = True) -> str:
    """The name prefix of this process's temporaries for PATH: hidden, PATH's name, then our PID (so that a
    later run can tell a killed run's leftovers from a running one's). RECORD: remember PATH for
    `remove_temporaries`."""
    if record:
        _TARGETS.add(Path(path).absolute())
    return f".{Path(path).name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def clean_stale(path: str | os.PathLike) -> None:
    """Remove temporaries for PATH left by runs that no longer exist (killed before they could clean up);
    those of running processes are left alone."""
    path = Path(path)
    stem = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(stem):] if entry.name.startswith(stem) else ""
        pid = rest.split(".", 1)[0]
        if pid.isdigit() and entry.name.endswith((".tmp", ".probe")) and not _alive(int(pid)):
            _remove(entry)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write DATA (text as UTF-8) to PATH atomically; the file gets the usual umask permissions."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        clean_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        with temporary(tmp):
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            umask = os.umask(0)  # mkstemp creates 0600; give the file what open() would have
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            with committing(path.parent):
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
