"""`onnxdepth sweep`: ratio specs, the points / CSV / plots / report it writes, resuming, argument guard,
interrupted runs and writes, unreachable ratios, and a perplexity sweep of the tiny Llama."""

from __future__ import annotations

import csv
import json
import os

import graphs
import numpy as np
import onnx
import pytest

from onnxdepth import api, bench, fileio
from onnxdepth.errors import InvalidArgumentError
from onnxdepth.eval import tasks
from onnxdepth.sweep import SweepConfig, parse_ratios, read_points, run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# residual CNN: 0.15 and 0.3 are reached, 0.998 is not (the largest reachable is ~0.996), so 0.999 is
# skipped without a prune
RATIOS = "0,0.15,0.3,0.998,0.999"


@pytest.fixture
def toy_task(monkeypatch):
    """A test-only task, registered with one decorator call: mean |output - reference output|."""
    import onnxruntime as ort

    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))  # registrations vanish after the test

    @tasks.register_task("toy", metric="error", higher_is_better=False, random=1.0, needs_reference=True)
    def _toy(model_path, *, reference, options):
        outputs = []
        for path in (model_path, reference):
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {i.name: np.full([d if isinstance(d, int) else 1 for d in i.shape], 0.5, np.float32)
                    for i in session.get_inputs()}
            outputs.append(session.run(None, feed)[0])
        return {"error": float(np.abs(outputs[0] - outputs[1]).mean()), "samples": 1}

    return "toy"


@pytest.fixture
def cnn(tmp_path):
    path = tmp_path / "residual.onnx"
    onnx.save(graphs.build_residual(), str(path))
    return path


@pytest.fixture
def prune_calls(monkeypatch):
    """The target ratio of every api.prune_model call (the sweep's one run per method with checkpoints,
    and api.prune_file's)."""
    calls = []
    real = api.prune_model

    def counting(model, config, **kwargs):
        calls.append(config.ratio)
        return real(model, config, **kwargs)

    monkeypatch.setattr(api, "prune_model", counting)
    return calls


def _no_temp_files(directory) -> bool:
    return not [name for _, _, files in os.walk(directory) for name in files if name.endswith(".tmp")]


# -- ratio specs ---------------------------------------------------------------------------------------
def test_parse_ratios():
    assert parse_ratios("0:0.48:0.06") == pytest.approx([0.06 * k for k in range(9)])
    assert len(parse_ratios("0:0.48:0.06")) == 9 and parse_ratios("0:0.48:0.06")[3] == 0.18  # no float noise
    assert parse_ratios("0:0.5:0.06")[-1] == 0.48
    assert parse_ratios("0.3, 0.1,0.3") == [0.1, 0.3]
    assert parse_ratios("0.2") == [0.2]
    for bad in ("0:0.5", "0:0.5:0", "a,b", "0.5:0.1:0.1", "0.1,1.0", ""):
        with pytest.raises(InvalidArgumentError, match="--ratios"):
            parse_ratios(bad)


# -- a CNN sweep end to end ----------------------------------------------------------------------------
def test_sweep_writes_points_csv_plots_report_and_resumes(cnn, tmp_path, toy_task, prune_calls, cli,
                                                             monkeypatch):
    out = tmp_path / "sweep"
    argv = ["sweep", cnn, "-o", out, "--ratios", RATIOS, "--eval", toy_task, "--bench-runs", "2"]
    code, stdout, stderr = cli(*argv)
    assert code == 0, stderr
    assert "5 points" in stdout
    # one run to the largest ratio writes 0.15 and 0.3 on the way, then stops short of 0.998 and 0.999
    assert prune_calls == [0.999]

    rows = {(r["method"], r["ratio"]): r for r in read_points(out / "points.jsonl")}
    assert set(rows) == {("unpruned", 0.0), ("full", 0.15), ("full", 0.3), ("full", 0.998), ("full", 0.999)}
    base = rows[("unpruned", 0.0)]
    assert base["status"] == "ok" and base["metrics"]["toy"] == 0.0 and base["reduction"] == 0.0
    for ratio in (0.15, 0.3):
        row = rows[("full", ratio)]
        assert row["status"] == "ok" and row["reduction"] >= ratio and row["params"] < base["params"]
        assert row["latency_ms"] > 0 and row["baseline_latency_ms"] > 0 and row["file_mb"] < base["file_mb"]
        assert row["metrics"]["toy"] > 0 and row["evals"]["toy"]["samples"] == 1
        assert (out / row["model"]).is_file() and row["seconds"] >= row["prune_s"]
    for ratio in (0.998, 0.999):
        assert rows[("full", ratio)]["status"] == "skipped"
        assert "largest reachable reduction" in rows[("full", ratio)]["reason"]

    with open(out / "points.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and {"method", "ratio", "reduction", "params", "latency_ms", "toy"} <= set(table[0])
    assert table[0]["method"] == "unpruned"
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["kind"] == "cnn" and meta["methods"] == ["full"] and meta["tasks"]["toy"]["random"] == 1.0
    for name in ("toy.png", "latency.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    page = (out / "report.html").read_text()
    assert "<table>" in page and "residual 0.15 full" in page and "data:image/png;base64," in page
    markdown = (out / "report.md").read_text()
    assert "](toy.png)" in markdown and "](latency.png)" in markdown
    assert _no_temp_files(out)

    # Rerun with the same arguments: nothing is pruned, evaluated or timed again.
    evaluated = []
    real_evaluate = tasks.evaluate
    stamps = (out / "points.jsonl").read_text()

    def counting_evaluate(*args, **kwargs):
        evaluated.append(args)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(tasks, "evaluate", counting_evaluate)
    prune_calls.clear()
    code, stdout, stderr = cli(*argv)
    assert code == 0, stderr
    assert prune_calls == [] and evaluated == []
    assert "0 new" in stdout and (out / "points.jsonl").read_text() == stamps


def test_changed_arguments_are_refused(cnn, tmp_path, cli):
    out = tmp_path / "sweep"
    assert cli("sweep", cnn, "-o", out, "--ratios", "0.2", "--eval", "none", "--bench-runs", "1")[0] == 0
    before = (out / "points.jsonl").read_text()
    code, _, stderr = cli("sweep", cnn, "-o", out, "--ratios", "0.2,0.4", "--eval", "none", "--bench-runs", "1")
    assert code == 1
    assert stderr.startswith("onnxdepth: error:") and "different arguments" in stderr and "ratios" in stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert (out / "points.jsonl").read_text() == before
    code, _, stderr = cli("sweep", cnn, "-o", out, "--ratios", "0.2", "--eval", "none", "--bench-runs", "3")
    assert code == 1 and "bench_runs" in stderr


def test_interrupted_sweep_keeps_finished_points_and_resumes(cnn, tmp_path, monkeypatch, prune_calls, cli):
    out = tmp_path / "sweep"
    argv = ["sweep", cnn, "-o", out, "--ratios", "0.1,0.2,0.3", "--eval", "none", "--bench-runs", "1"]
    real_bench = bench.bench_models
    calls = []

    def interrupting(paths, **kwargs):
        calls.append(paths)
        if len(calls) == 3:  # Ctrl-C while timing the second pruned point
            raise KeyboardInterrupt
        return real_bench(paths, **kwargs)

    monkeypatch.setattr(bench, "bench_models", interrupting)
    code, _, stderr = cli(*argv)
    assert code == 130 and "rerun the same command to resume" in stderr
    assert [(r["method"], r["ratio"]) for r in read_points(out / "points.jsonl")] == [("unpruned", 0.0), ("full", 0.1)]
    assert not (out / "points.csv").exists() and not (out / "report.html").exists()
    assert _no_temp_files(out)
    assert prune_calls == [0.3]  # one run, checkpoints 0.1 and 0.2 on the way
    assert sorted(p.name for p in (out / "models").glob("*.onnx")) == [
        "full-0.1000.onnx", "full-0.2000.onnx", "full-0.3000.onnx"]

    monkeypatch.setattr(bench, "bench_models", real_bench)
    prune_calls.clear()
    assert cli(*argv)[0] == 0
    assert prune_calls == []  # the models written before the interrupt are reused
    assert len(read_points(out / "points.jsonl")) == 4 and (out / "report.html").is_file()


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "points.jsonl"
    fileio.write_atomic(target, "old\n")

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        fileio.write_atomic(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.jsonl"]


def test_sweep_errors_are_one_line(cnn, tmp_path, cli):
    out = tmp_path / "sweep"
    for argv, message in [
        (["--eval", "perplexity"], "needs --text"),
        (["--eval", "nosuchtask"], "unknown task"),
        (["--eval", "none", "--ratios", "0.1:0.5"], "--ratios"),
        (["--eval", "none", "--granularity", "coarse"], "--granularity coarse"),
        (["--eval", "none", "--bench-runs", "0"], "--bench-runs"),
    ]:
        code, _, stderr = cli("sweep", cnn, "-o", out, *argv)
        assert code == 1 and message in stderr and "Traceback" not in stderr, (argv, stderr)
    code, _, stderr = cli("sweep", tmp_path / "missing.onnx", "-o", out, "--eval", "none")
    assert code == 1 and "missing.onnx" in stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "points.jsonl").write_text("{}\n")
    code, _, stderr = cli("sweep", cnn, "-o", tmp_path / "other", "--eval", "none")
    assert code == 1 and "not a sweep directory" in stderr


def test_tasks_registry():
    assert {"perplexity", "detection"} <= set(tasks.task_names())
    assert tasks.get_task("perplexity").log_scale and not tasks.get_task("perplexity").higher_is_better
    assert tasks.get_task("detection").needs_reference and tasks.random_line("detection", "unused.onnx") == 0.0
    with pytest.raises(InvalidArgumentError, match="needs --text"):
        tasks.check_options("perplexity", {})
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("perplexity", metric="x", higher_is_better=True)(lambda *a, **k: {})


# -- the tiny Llama: perplexity per granularity --------------------------------------------------------
def test_transformer_sweep_perplexity(tmp_path_factory, tmp_path):
    for module in ("torch", "optimum.exporters.onnx", "tokenizers"):
        pytest.importorskip(module)
    from tiny_lm import VOCAB, tiny_llama_lm

    model, text = tiny_llama_lm(tmp_path_factory)
    # MMLU-style CSV (question, four choices, answer letter), when the multiple-choice evaluator is there
    data = tmp_path / "mmlu"
    data.mkdir()
    (data / "pets_val.csv").write_text("the cat sat on the,mat,dog,park,ball,A\nthe sky is,red,blue,warm,small,B\n")
    assert "multiple-choice" in tasks.task_names()  # our own evaluator: always registered, never optional
    extra = ["multiple-choice"]
    config = SweepConfig(model=str(model), ratios=parse_ratios("0:0.2:0.1"), granularities=["fine", "block"],
                         tasks=["perplexity", *extra], bench_runs=1,
                         eval_options={"text": str(text), "ctx": 16, "max_tokens": 96, "data": str(data)})
    seen = []
    result = run_sweep(config, tmp_path / "sweep", on_point=lambda row, resumed: seen.append(row["method"]))
    assert seen == ["unpruned", "fine", "fine", "block", "block"]
    rows = {(r["method"], r["ratio"]): r for r in result["rows"]}
    assert set(rows) == {("unpruned", 0.0), ("fine", 0.1), ("fine", 0.2), ("block", 0.1), ("block", 0.2)}
    assert all(r["status"] == "ok" for r in rows.values())
    assert all(r["metrics"]["perplexity"] > 1.0 for r in rows.values())
    for task in extra:  # the pruned models in models/ find the tokenizer beside the unpruned one
        assert all(0.0 <= r["metrics"][task] <= 1.0 and r["evals"][task]["questions"] == 2 for r in rows.values())
    assert rows[("block", 0.1)]["reduction"] > rows[("fine", 0.1)]["reduction"] >= 0.1  # a whole layer is more
    meta = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert meta["kind"] == "transformer" and meta["methods"] == ["fine", "block"]
    assert meta["tasks"]["perplexity"]["random"] == VOCAB and meta["tasks"]["perplexity"]["log_scale"]
    assert (tmp_path / "sweep" / "perplexity.png").read_bytes().startswith(PNG_MAGIC)
    for task in extra:
        assert meta["tasks"][task]["random"] == 0.25
        assert (tmp_path / "sweep" / f"{task}.png").read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "random guess perplexity = 128" in page and "tg 0.10 fine" in page
    plan = json.loads((tmp_path / "sweep" / "models" / "fine-0.1000.plan.json").read_text())
    assert plan["granularity"] == "fine" and plan["layers"] == 3


def test_cnn_sweep_full_and_reduced(cnn, tmp_path, cli):
    out = tmp_path / "sweep"
    code, _, stderr = cli("sweep", cnn, "-o", out, "--ratios", "0.1", "--eval", "none", "--bench-runs", "1",
                          "--search-space", "full,reduced")
    assert code == 0, stderr
    rows = {(r["method"], r["ratio"]): r for r in read_points(out / "points.jsonl")}
    assert set(rows) == {("unpruned", 0.0), ("full", 0.1), ("reduced", 0.1)}
    plan = json.loads((out / rows[("reduced", 0.1)]["model"]).with_suffix(".plan.json").read_text())
    assert plan["search_space"] == "reduced" and plan["steps"]
    assert all(s["removed_channels"] == 0 for s in plan["steps"])
    code, _, stderr = cli("sweep", cnn, "-o", tmp_path / "x", "--eval", "none", "--search-space", "tiny")
    assert code == 1 and "--search-space" in stderr
