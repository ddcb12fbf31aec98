"""Running one command of a fuzz case in a child process under a time and a memory limit.

Two ways, same result (`Run`):

- `run_forked`: os.fork() of the current process, which has already imported onnxdepth, onnx and ONNX
  Runtime, then `onnxdepth.cli.main(argv)` in the child: ~10 ms to start instead of ~0.8 s for a fresh
  interpreter, which is what lets CI run hundreds of cases in two minutes. A crash, a hang or an OOM still
  only takes the child down.
- `run_subprocess`: `python -m onnxdepth.cli` as a fresh process, exactly what a user runs (tools/fuzz.py
  --mode subprocess; slow, and the reference when a forked result looks suspicious).

The memory limit is RLIMIT_AS: MEMORY_HEADROOM of address space on top of what the interpreter already maps
(torch alone maps 3.5 GiB of address space it never touches, so an absolute 4 GiB would fail clean runs).
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["MEMORY_HEADROOM", "Run", "address_space", "run_forked", "run_subprocess"]

MEMORY_HEADROOM = 4 << 30


@dataclass
class Run:
    code: int | None  # exit status; None when killed by a signal or the time limit
    signal: int | None  # the signal that ended it (SIGKILL after a time-out)
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float


def address_space() -> int:
    """Bytes of address space this process maps now (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit(memory: int) -> None:
    """In the child: no core files, at most MEMORY bytes of address space."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _child(target: Callable[[], int], stdout: Path, stderr: Path, memory: int, cwd: Path | None) -> None:
    """The forked child: redirect fds 1 and 2 (ONNX Runtime's C++ logs too), run TARGET, exit with its code.
    Never returns (os._exit: no atexit handlers or pytest teardown of the parent run here)."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        import faulthandler
        import logging

        faulthandler.disable()  # pytest's handler would write a crash to the parent's stderr
        for fd, path in ((1, stdout), (2, stderr)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        logging.root.handlers.clear()  # so the CLI's logging.basicConfig writes to the new stderr
        if cwd is not None:
            os.chdir(cwd)
        _limit(memory)
        code = target()
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what would escape `onnxdepth`: the traceback a user would see
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """Wait for child PID at most TIMEOUT seconds (then SIGKILL its process group); (wait status, timed out)."""
    fd = os.pidfd_open(pid)
    try:
        ready = select.select([fd], [], [], timeout)[0]
    finally:
        os.close(fd)
    if not ready:
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except ProcessLookupError:
                pass
    return os.waitpid(pid, 0)[1], not ready


def _read(path: Path) -> str:
    try:
        return path.read_bytes()[-200_000:].decode("utf-8", "replace")
    except OSError:
        return ""


def run_forked(target: Callable[[], int], folder: Path, timeout: float, headroom: int = MEMORY_HEADROOM,
               cwd: Path | None = None) -> Run:
    """TARGET() in a forked child (working directory CWD); its output captured in FOLDER/stdout, FOLDER/stderr."""
    stdout, stderr = folder / "stdout", folder / "stderr"
    memory = address_space() + headroom
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(target, stdout, stderr, memory, cwd)
    status, timed_out = _wait(pid, timeout)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return Run(code if code >= 0 and not timed_out else None, -code if code < 0 else None, timed_out,
               _read(stdout), _read(stderr), seconds)


#: Address space a fresh interpreter with everything the CLI may import maps (torch, onnx2torch), measured.
_FRESH_INTERPRETER = 4 << 30


def run_subprocess(argv: list[str], folder: Path, timeout: float, headroom: int = MEMORY_HEADROOM,
                   cwd: Path | None = None) -> Run:
    """`python -m onnxdepth.cli ARGV` as a fresh process in its own session (working directory CWD)."""
    stdout, stderr = folder / "stdout", folder / "stderr"
    memory = _FRESH_INTERPRETER + headroom
    started = time.perf_counter()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "onnxdepth.cli", *argv], stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
                                   preexec_fn=lambda: _limit(memory))
    status, timed_out = _wait(process.pid, timeout)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    code = process.returncode
    return Run(code if code >= 0 and not timed_out else None, -code if code < 0 else None, timed_out,
               _read(stdout), _read(stderr), time.perf_counter() - started)
