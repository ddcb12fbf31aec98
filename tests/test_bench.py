"""onnxdepth bench: interleaved latency table for several models."""

from __future__ import annotations

import json

import graphs
import onnx
import pytest

from onnxdepth.config import PruneConfig
from onnxdepth import api
from onnxdepth.bench import bench_models
from onnxdepth.cli import main


@pytest.fixture()
def two_models(tmp_path):
    model = graphs.build_residual()
    original = tmp_path / "a.onnx"
    onnx.save(model, original)
    pruned = tmp_path / "b.onnx"
    onnx.save(api.prune_model(model, PruneConfig(0.3)).model, pruned)
    return original, pruned


def test_bench_rows(two_models):
    rows = bench_models([str(p) for p in two_models], runs=5, warmup=1)
    assert [r.model for r in rows] == [str(p) for p in two_models]
    assert rows[0].params > rows[1].params and rows[0].file_mb > rows[1].file_mb
    assert all(r.median_ms > 0 and r.p90_ms >= r.median_ms and r.runs == 5 for r in rows)
    assert rows[0].vs_first == 1.0


def test_bench_cli_json_and_html(two_models, tmp_path, capsys):
    html = tmp_path / "bench.html"
    assert main(["bench", *map(str, two_models), "--runs", "3", "--json", "--html", str(html)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "params", "file_mb", "median_ms", "p90_ms", "vs_first", "session_rss_mb"} <= set(data[0])
    assert "<table>" in html.read_text() and "a.onnx" in html.read_text()


def test_bench_errors(two_models, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    assert main(["bench", str(two_models[0]), str(bad)]) == 1
    assert capsys.readouterr().err.startswith("onnxdepth: error:")
    assert main(["bench", str(two_models[0]), "--runs", "0"]) == 1


def test_bench_dataset_batches_and_totals(two_models, tmp_path):
    import numpy as np

    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32))
    # The test graph has a fixed batch of 1: 5 rows make 5 batches.
    rows = bench_models([str(p) for p in two_models], runs=3, warmup=0, data=str(data))
    assert len(rows) == len(two_models)
    assert all(r.batches == 5 for r in rows)
    # The total of a pass is the sum of its batches, so it exceeds the median batch.
    assert all(r.total_ms > r.median_ms for r in rows)
    images = tmp_path / "images.npz"
    np.savez(images, images=np.zeros((4, 3, 16, 16), dtype=np.float32))
    assert bench_models([str(two_models[0])], runs=1, warmup=0, data=str(images), batch_size=1)[0].batches == 4
    random_rows = bench_models([str(two_models[0])], runs=2, warmup=0, batches=3)
    assert random_rows[0].batches == 3


def test_bench_dataset_errors(two_models, tmp_path, capsys):
    import numpy as np

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, other=np.zeros((2, 3)))
    assert main(["bench", str(two_models[0]), "--data", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data" in err and "x" in err
    assert main(["bench", str(two_models[0]), "--data", str(tmp_path / "none.npz")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", str(two_models[0]), "--batch-size", "0"]) == 1
    capsys.readouterr()
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 3, 16, 16), dtype=np.float32))
    # Batches of 2 for a model with a fixed batch of 1: one line naming the model, no traceback.
    assert main(["bench", str(two_models[0]), "--data", str(data), "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not run on these inputs" in err
