"""Kill tests: `onnxdepth prune` started as a subprocess and sent SIGINT, SIGTERM or SIGKILL at some moment,
then the files judged (tests/test_kill.py runs a handful, tools/kill_test.py --repeat N many).

After any signal the input (and its .data) must be byte-identical and OUT absent or complete and valid
(checker + ONNX Runtime). After SIGINT / SIGTERM nothing else may be beside OUT; after SIGKILL only the
temporaries of the dead PID may be, and the next prune to the same OUT must remove them
(`fileio.clean_stale`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

import graphs

__all__ = ["KILL_SIGNALS", "Trial", "judge_folder", "make_models", "prune_command", "race", "snapshot",
           "start_prune", "trial"]

KILL_SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
#: What a prune may leave beside OUT when it completed: OUT, its data file and the plan.
_OUTPUTS = {"out.onnx", "out.onnx.data", "out.onnx.1.data", "out.plan.json"}
#: A temporary's name: hidden, the target's name, the writer's PID (`fileio.temp_prefix`).
_TEMPORARY = re.compile(r"\.(?:out\.onnx|out\.onnx\.data|out\.onnx\.1\.data|out\.plan\.json)\.(\d+)\.")


def make_models(folder: Path) -> dict[str, Path]:
    """The two inputs: the residual CNN in one file, and the same with every weight in in.onnx.data."""
    models = {}
    for kind in ("plain", "external"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        path = folder / kind / "in.onnx"
        extra = dict(save_as_external_data=True, location="in.onnx.data", size_threshold=0) if kind == "external" else {}
        onnx.save_model(graphs.build_residual(), str(path), **extra)
        models[kind] = path
    return models


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def prune_command(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "onnxdepth.cli", "prune", str(model), str(out), "--ratio", "0.3"]


def start_prune(model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(prune_command(model, out), cwd=out.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def valid_model(path: Path) -> str | None:
    """None when PATH passes the full checker and opens in ONNX Runtime, else why not."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any refusal is the verdict
        return f"{path.name} is not a valid model: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def judge_folder(out: Path, dead_pids: set[int] = frozenset()) -> str | None:
    """OUT's folder: OUT absent or valid; no temporaries but those of DEAD_PIDS (SIGKILLed runs)."""
    for name in os.listdir(out.parent):
        if name in _OUTPUTS:
            continue
        match = _TEMPORARY.match(name)
        if match is None or int(match.group(1)) not in dead_pids:
            return f"left {name!r} beside OUT"
    data_files = {name for name in os.listdir(out.parent) if name.endswith(".data")}
    if out.exists():
        light = onnx.load(str(out), load_external_data=False)
        used = {e.value for t in light.graph.initializer for e in t.external_data if e.key == "location"}
        # Only a SIGKILL between the two renames may orphan a data file, and the next write removes it.
        if data_files - used and not dead_pids:
            return f"left the unreferenced data file(s) {sorted(data_files - used)} beside OUT"
        return valid_model(out)
    if data_files and not dead_pids:
        return f"left {sorted(data_files)} without OUT"
    return None


#: Exit statuses after each signal: the CLI's own (130, 143), or death by the signal itself (a SIGINT or SIGTERM
#: that arrives while the interpreter is still importing, before `cli.main` installs its handlers).
_EXPECTED_CODES = {"SIGINT": {130, -signal.SIGINT}, "SIGTERM": {143, -signal.SIGTERM}, "SIGKILL": {-signal.SIGKILL}}


@dataclass
class Trial:
    signal: str
    delay: float
    sent: bool  # False: the prune had finished before the signal was due
    code: int | None
    failure: str | None


def trial(model: Path, out: Path, sig: str, delay: float, dead_pids: set[int]) -> Trial:
    """One prune of MODEL to OUT, sent SIG after DELAY seconds; DEAD_PIDS collects SIGKILLed PIDs."""
    before = snapshot(model.parent)
    process = start_prune(model, out)
    time.sleep(delay)
    sent = process.poll() is None
    if sent:
        process.send_signal(KILL_SIGNALS[sig])
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return Trial(sig, delay, sent, None, f"no exit within 120 s of {sig}")
    if sig == "SIGKILL":
        dead_pids.add(process.pid)
    failure = None
    # A signal that came as the prune was exiting on its own may find it done: 0 is right then too.
    if process.returncode not in _EXPECTED_CODES[sig] | ({0} if not sent or out.exists() else set()):
        failure = f"exit status {process.returncode} after {sig}: {stderr.decode(errors='replace').strip()[-300:]}"
    elif snapshot(model.parent) != before:
        failure = "the input changed"
    elif "Traceback" in stderr.decode(errors="replace") and process.returncode != -signal.SIGINT:
        failure = f"traceback: {stderr.decode(errors='replace')[-300:]}"  # only an import-time Ctrl-C may show one
    failure = failure or judge_folder(out, dead_pids)
    return Trial(sig, delay, sent, process.returncode, failure)


def finish(model: Path, out: Path) -> str | None:
    """A prune to OUT run to the end: exit 0, OUT valid, and every stale temporary gone."""
    done = subprocess.run(prune_command(model, out), cwd=out.parent, capture_output=True, timeout=300)
    if done.returncode != 0:
        return f"the prune after the kills failed: {done.stderr.decode(errors='replace')[-300:]}"
    if not out.exists():
        return "the prune after the kills wrote no OUT"
    return judge_folder(out)  # no dead PIDs allowed any more: clean_stale must have removed theirs


def race(model: Path, out: Path) -> str | None:
    """Two prunes to the same OUT at once: both succeed, and exactly one complete valid OUT (with its data
    file and plan) is left, nothing else."""
    processes = [start_prune(model, out) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in processes]
    for p in processes:
        p.stderr.close()
    if codes != [0, 0]:
        return f"racing prunes exited {codes}"
    left = set(os.listdir(out.parent))
    # The second commit puts its data under the name the first OUT does not use (`graph.io`): either name.
    data = {name for name in left if name in ("out.onnx.data", "out.onnx.1.data")}
    expected = {"out.onnx", "out.plan.json"} | (data if (model.parent / "in.onnx.data").exists() else set())
    if (model.parent / "in.onnx.data").exists() and len(data) != 1:
        return f"racing prunes left {sorted(left)}, expected one data file"
    if left != expected:
        return f"racing prunes left {sorted(left)}, expected {sorted(expected)}"
    return valid_model(out)
