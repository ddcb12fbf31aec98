"""The fuzz oracle: run `onnxdepth units IN --json` and `onnxdepth prune IN OUT --ratio 0.3` on a case and
judge each run.

PASS: exit 0 with its result (units: JSON on stdout; prune: OUT that onnx.checker (full_check) accepts and
ONNX Runtime opens, nothing beside it but OUT.data and the plan), or exit 1, 2 or 3 with one
`onnxdepth: error:` line on stderr, no traceback, no internal error, nothing at OUT and nothing left in
OUT's folder. The input files must be byte-identical afterwards, and the working directory (an empty folder)
still empty. Anything else is a failure: a traceback,
an internal error, a hang, death by a signal, running out of memory, leftover files, another exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterable, Iterator

from fuzz_cases import MODEL, Case
from fuzz_run import Run, run_forked, run_subprocess

__all__ = ["RATIO", "judge", "preload", "run_case", "run_many"]

RATIO = "0.3"
#: Longest error line accepted (a message must not echo a 10 KB dim_param back).
_MAX_ERROR_LINE = 2000
_PRUNE_OUTPUTS = {"out.onnx", "out.onnx.data", "out.plan.json"}


def _problem(run: Run, timeout: float) -> str | None:
    """What is wrong with RUN whatever it did (a hang, a crash, a traceback), or None."""
    if run.timed_out:
        return f"hang (no exit within {timeout:g} s)"
    if run.signal is not None:
        return f"killed by {signal.Signals(run.signal).name}"
    if "Traceback (most recent call last)" in run.stderr:
        return "traceback: " + run.stderr.strip().splitlines()[-1][:300]
    for line in run.stderr.splitlines():
        if "internal error" in line or "MemoryError" in line:
            return line[:300]
    if run.code not in (0, 1, 2, 3):
        return f"exit code {run.code}: {run.stderr.strip()[-300:]}"
    return None


def _clean_error(run: Run) -> str | None:
    errors = [line for line in run.stderr.splitlines() if line.startswith("onnxdepth: error:")]
    if len(errors) != 1:
        return f"exit {run.code} with {len(errors)} error lines: {run.stderr.strip()[-300:]!r}"
    if len(errors[0]) > _MAX_ERROR_LINE:
        return f"error line of {len(errors[0])} characters"
    return None


def _verify_output(out: Path, folder: Path, timeout: float) -> str | None:
    """OUT passes the full checker and opens in ONNX Runtime (in a child: a crash there is a failure too)."""

    def check() -> int:
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(str(out), full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        return 0

    run = run_forked(check, folder, timeout, cwd=folder / "cwd")
    if run.code != 0:
        return "OUT rejected: " + (_problem(run, timeout) or run.stderr.strip()[-300:])
    return None


def judge(command: str, run: Run, case_dir: Path, inputs: dict[str, bytes], timeout: float) -> str | None:
    """The failure of one run of COMMAND ('units' or 'prune'), or None when it passed."""
    problem = _problem(run, timeout)
    if problem:
        return problem
    stray = os.listdir(case_dir / "cwd")
    if stray:
        return f"wrote {sorted(stray)[:5]} into the working directory"
    for name, data in inputs.items():
        path = case_dir / "in" / name
        if not path.is_file() or path.read_bytes() != data:
            return f"input {name} changed"
    if command == "units":
        if run.code != 0:
            return _clean_error(run)
        try:
            return None if "units" in json.loads(run.stdout) else "no units in the JSON"
        except ValueError:
            return "exit 0 without JSON on stdout"
    left = set(os.listdir(case_dir / "out"))
    if run.code != 0:
        return _clean_error(run) or (f"exit {run.code} but left {sorted(left)}" if left else None)
    if "out.onnx" not in left or not left <= _PRUNE_OUTPUTS:
        return f"exit 0 but the output folder holds {sorted(left)}"
    return _verify_output(case_dir / "out" / "out.onnx", case_dir, timeout)


def _command(argv: list[str], folder: Path, timeout: float, mode: str) -> Run:
    if mode == "subprocess":
        return run_subprocess(argv, folder, timeout, cwd=folder / "cwd")

    def target() -> int:
        from onnxdepth.cli import main

        return main(argv)

    return run_forked(target, folder, timeout, cwd=folder / "cwd")


def run_case(case: Case, case_dir: Path, *, timeout: float = 20.0, mode: str = "fork") -> list[str]:
    """Run CASE's two commands in CASE_DIR (in/, out/); the failures, as 'units: ...' / 'prune: ...'."""
    if mode == "fork":
        preload()
    shutil.rmtree(case_dir, ignore_errors=True)
    (case_dir / "in").mkdir(parents=True)
    (case_dir / "out").mkdir()
    (case_dir / "cwd").mkdir()  # the commands' working directory: must stay empty
    for name, data in case.files.items():
        (case_dir / "in" / name).write_bytes(data)
    model, out = case_dir / "in" / MODEL, case_dir / "out" / "out.onnx"
    failures = []
    for command, argv in (("units", ["units", str(model), "--json"]),
                          ("prune", ["prune", str(model), str(out), "--ratio", RATIO])):
        run = _command(argv, case_dir, timeout, mode)
        failure = judge(command, run, case_dir, case.files, timeout)
        if failure:
            failures.append(f"{command}: {failure}")
    return failures


def preload() -> None:
    """Import what the commands need once, here: every forked child then starts with it (about 0.4 s less
    per command than importing onnxdepth, onnx and ONNX Runtime again in each)."""
    import onnx_graphsurgeon  # noqa: F401
    import onnxruntime  # noqa: F401
    import rich.console  # noqa: F401

    import onnxdepth.api  # noqa: F401
    import onnxdepth.cli.commands  # noqa: F401
    import onnxdepth.prune.session  # noqa: F401


def _supervise(case: Case, case_dir: Path, timeout: float, mode: str) -> None:
    """A forked case supervisor: run the case, leave the verdict in CASE_DIR/verdict.json, exit."""
    code = 1
    try:
        started = time.perf_counter()
        failures = run_case(case, case_dir, timeout=timeout, mode=mode)
        verdict = {"failures": failures, "seconds": time.perf_counter() - started}
        (case_dir.parent / f"{case_dir.name}.verdict.json").write_text(json.dumps(verdict))
        code = 0
    finally:
        os._exit(code)


def run_many(cases: Iterable[Case], work: Path, *, jobs: int = 2, timeout: float = 20.0,
             mode: str = "fork") -> Iterator[tuple[Case, list[str], float]]:
    """Run CASES, JOBS at a time (each in a forked supervisor under WORK); yields (case, failures, seconds)
    as each finishes. The folder of a passing case is removed."""
    preload()
    running: dict[int, tuple[Case, Path]] = {}
    pending = iter(cases)
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            case = next(pending, None)
            if case is None:
                exhausted = True
                break
            case_dir = work / f"case{len(running)}-{os.urandom(3).hex()}"
            pid = os.fork()
            if pid == 0:
                _supervise(case, case_dir, timeout, mode)
            running[pid] = (case, case_dir)
        if not running:
            break
        pid, status = os.wait()
        if pid not in running:
            continue
        case, case_dir = running.pop(pid)
        verdict_path = case_dir.parent / f"{case_dir.name}.verdict.json"
        try:
            verdict = json.loads(verdict_path.read_text())
            verdict_path.unlink()
        except (OSError, ValueError):
            verdict = {"failures": [f"fuzz supervisor died (wait status {status})"], "seconds": 0.0}
        if not verdict["failures"]:
            shutil.rmtree(case_dir, ignore_errors=True)
        yield case, verdict["failures"], verdict["seconds"]
