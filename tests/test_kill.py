"""Killing `onnxdepth prune`: SIGINT, SIGTERM and SIGKILL mid-run leave the input untouched, OUT absent or
complete and valid, and no temporaries (a SIGKILLed run's are removed by the next prune to the same OUT);
two prunes racing to one OUT leave one valid OUT. tools/kill_test.py --repeat 50 runs many random kills."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import kill_harness  # noqa: E402

from onnxdepth import fileio  # noqa: E402
from onnxdepth.cli import EXIT_INTERRUPTED, EXIT_TERMINATED  # noqa: E402
from onnxdepth.graph import io as graph_io  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return kill_harness.make_models(tmp_path_factory.mktemp("kill-inputs"))


@pytest.fixture(scope="module")
def duration(models, tmp_path_factory):
    """Seconds one uninterrupted prune of the plain model takes here (the kills are placed within it)."""
    out = tmp_path_factory.mktemp("kill-calibrate") / "out.onnx"
    started = time.perf_counter()
    assert kill_harness.finish(models["plain"], out) is None
    return time.perf_counter() - started


@pytest.mark.parametrize("kind", ["plain", "external"])
def test_kills_mid_prune_leave_valid_files(models, duration, kind, tmp_path):
    out = tmp_path / "out.onnx"
    dead: set[int] = set()
    # Late enough to be past the imports, spread over loading, scoring, verifying and writing.
    for sig, fraction in (("SIGINT", 0.55), ("SIGTERM", 0.7), ("SIGKILL", 0.85), ("SIGKILL", 0.95)):
        result = kill_harness.trial(models[kind], out, sig, fraction * duration, dead)
        assert result.failure is None, result
    assert kill_harness.finish(models[kind], out) is None  # and the SIGKILLed runs' leftovers are gone


@pytest.mark.parametrize("kind", ["plain", "external"])
def test_two_prunes_racing_to_one_out_leave_one_valid_file(models, kind, tmp_path):
    assert kill_harness.race(models[kind], tmp_path / "out.onnx") is None


def test_stale_temporaries_of_a_dead_run_are_removed_by_the_next_prune(models, tmp_path, cli):
    out = tmp_path / "out.onnx"
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    stale = [tmp_path / f".out.onnx.{dead_pid}.abc.tmp", tmp_path / f".out.plan.json.{dead_pid}.x.tmp"]
    for path in stale:
        path.write_bytes(b"half-written")
    live = tmp_path / f".out.onnx.{os.getpid()}.live.tmp"  # a running process's: left alone
    live.write_bytes(b"in progress")
    code, _, err = cli("prune", models["plain"], out, "--ratio", "0.3")
    assert code == 0, err
    assert not any(path.exists() for path in stale) and live.exists()


def _signal_during_save(monkeypatch, sig: int) -> None:
    """Send SIG to this process from inside onnx.save_model, as a kill arriving mid-write would."""
    real_save = onnx.save_model

    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        os.kill(os.getpid(), sig)
        time.sleep(0.1)  # the handler runs here, at the next bytecode

    monkeypatch.setattr(graph_io.onnx, "save_model", save)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, EXIT_TERMINATED, "terminated"),
                                             (signal.SIGINT, EXIT_INTERRUPTED, "interrupted")])
def test_sigterm_is_handled_like_sigint(models, tmp_path, cli, monkeypatch, sig, code, word):
    _signal_during_save(monkeypatch, sig)
    before = signal.getsignal(signal.SIGTERM)
    exit_code, _, err = cli("prune", models["plain"], tmp_path / "out.onnx", "--ratio", "0.3")
    assert exit_code == code and err.strip().endswith(f"onnxdepth: {word}; nothing partial written"), err
    assert os.listdir(tmp_path) == []  # the temporary file was removed, no OUT
    assert signal.getsignal(signal.SIGTERM) == before  # main() put the previous handler back


def test_an_error_the_signal_caused_still_exits_as_terminated(models, tmp_path, cli, monkeypatch):
    """SIGTERM cutting an extension module's import short surfaces as "ImportError: initialization failed":
    still the SIGTERM exit, not an internal error."""
    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        try:
            time.sleep(0.1)
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(graph_io.onnx, "save_model", save)
    code, _, err = cli("prune", models["plain"], tmp_path / "out.onnx", "--ratio", "0.3")
    assert code == EXIT_TERMINATED and "internal error" not in err, err
    assert os.listdir(tmp_path) == []


def test_a_signal_during_the_commit_waits_for_both_renames(models, tmp_path, cli, monkeypatch):
    """SIGTERM between the renames of OUT.data and OUT is deferred: the pair lands whole, then the exit."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # a handler running now would cut the commit in two
        real_replace(src, dst)

    monkeypatch.setattr(graph_io.os, "replace", replace)
    out = tmp_path / "out.onnx"
    code, _, err = cli("prune", models["external"], out, "--ratio", "0.3")
    assert code == EXIT_TERMINATED, err
    assert [Path(c).name for c in calls] == ["out.onnx.data", "out.onnx"]
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]  # no plan: it came after
    assert kill_harness.valid_model(out) is None


def test_remove_temporaries_also_sweeps_unregistered_ones(tmp_path):
    """A temporary created just before a signal, not yet registered, still carries our prefix: swept."""
    target = tmp_path / "out.onnx"
    orphan = tmp_path / f"{fileio.temp_prefix(target)}orphan.tmp"
    orphan.write_bytes(b"x")
    other = tmp_path / ".out.onnx.1.other.tmp"  # PID 1's: not ours
    other.write_bytes(b"y")
    fileio.remove_temporaries()
    assert not orphan.exists() and other.exists()
