"""onnxdepth.runtime: sessions from every kind of source, one-line errors, progress bars; bench --html on disk."""

from __future__ import annotations

import os

import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxdepth.cli import main
from onnxdepth.errors import InvalidArgumentError, ModelLoadError
from onnxdepth.runtime import ProviderUnavailableError, first_line, open_session, progress


@pytest.fixture()
def residual(tmp_path):
    model = graphs.build_residual()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return model, path


def test_open_session_from_path_proto_bytes_and_session_runs_the_same(residual):
    model, path = residual
    feeds = graphs.random_inputs(model)
    sessions = [open_session(path), open_session(str(path)), open_session(model),
                open_session(model.SerializeToString())]
    expected = sessions[0].run(None, feeds)
    for session in sessions[1:]:
        for got, want in zip(session.run(None, feeds), expected):
            np.testing.assert_array_equal(got, want)
    assert open_session(sessions[0], threads=3) is sessions[0]  # an existing session is returned as it is


def test_open_session_options(residual):
    model, _ = residual
    session = open_session(model, threads=2, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                           execution_mode=ort.ExecutionMode.ORT_SEQUENTIAL)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert open_session(model, threads=0).get_session_options().intra_op_num_threads == 0  # ORT's default
    with pytest.raises(InvalidArgumentError, match="threads"):
        open_session(model, threads=-1)


def test_open_session_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        open_session(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match=r"onnxruntime cannot load .*broken\.onnx") as info:
        open_session(broken)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is not None  # chained, so -v shows ORT's own traceback
    with pytest.raises(InvalidArgumentError, match="cannot open a session of a int"):
        open_session(3)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_open_session_cuda_unavailable_is_a_typed_error(residual):
    with pytest.raises(ProviderUnavailableError, match="CUDA execution provider is not available"):
        open_session(residual[0], device="cuda")
    with pytest.raises(InvalidArgumentError, match="expected cpu or cuda"):
        open_session(residual[0], device="tpu")


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("first\nsecond\nthird"), "first"),
    (RuntimeError("\n  \n  indented line  \nnext"), "indented line"),
    (ValueError(""), "ValueError"),
    (FileNotFoundError(2, "No such file or directory", "/x"), "No such file or directory"),
    (OSError("plain message"), "plain message"),
])
def test_first_line(exc, expected):
    assert first_line(exc) == expected


def test_first_line_limit():
    assert first_line(RuntimeError("x" * 50), limit=10) == "xxxxxxx..."
    assert first_line(RuntimeError("short"), limit=10) == "short"


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_counts_and_closes(enabled, capsys):
    with progress(3, "test", enabled) as bar:
        for step in range(3):
            bar.advance(note=f"item {step}")
        bar.note("done")
        assert bar._bar.tasks[0].completed == 3
        assert bar._bar.tasks[0].description == "done"
    assert capsys.readouterr().out == ""  # bars go to stderr, never into stdout (JSON output)


# -- bench --html ----------------------------------------------------------------------------------------

def test_bench_html_is_written_with_the_usual_mode(residual, tmp_path, capsys):
    html = tmp_path / "bench.html"
    assert main(["bench", str(residual[1]), "--runs", "1", "--warmup", "0", "--html", str(html)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert html.stat().st_mode & 0o777 == 0o666 & ~umask  # 0644 under the usual umask, not mkstemp's 0600
    assert "<table>" in html.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_bench_html_unwritable_is_one_line_error(residual, tmp_path, capsys):
    code = main(["bench", str(residual[1]), "--runs", "1", "--html", str(tmp_path / "missing" / "b.html")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("onnxdepth: error:") and len(err.strip().splitlines()) == 1


def test_bench_html_write_failure_is_one_line_error(residual, tmp_path, capsys, monkeypatch):
    from onnxdepth import fileio

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    html = tmp_path / "b.html"
    code = main(["bench", str(residual[1]), "--runs", "1", "--warmup", "0", "--html", str(html)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"onnxdepth: error: {html}: cannot write (Permission denied)")
    assert not html.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
