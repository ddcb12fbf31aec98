"""`prune --max-drop D` (one selection, a bisection over its prefixes) and `prune --bench`."""

from __future__ import annotations

import json

import pytest

import graphs
from onnxdepth import api


def _prune(cli, *argv):
    code, out, err = cli("prune", *argv, "--json")
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture
def source(save_model):
    return save_model(graphs.build_residual(), "in.onnx")


def test_the_longest_prefix_within_the_budget_is_chosen(cli, source, tmp_path):
    out = tmp_path / "out.onnx"
    # Magnitude (not the default's measured angular scores): its prefixes cross the budget on this graph.
    code, summary, err = _prune(cli, source, out, "--max-drop", "0.05", "--importance", "magnitude")
    assert code == 0, err
    budget = summary["budget"]
    assert budget["selection_runs"] == 1 and budget["max_drop"] == 0.05
    assert budget["drop"] <= 0.05 and budget["drop"] == summary["fidelity"]["drop"]
    assert budget["chosen_ratio"] == pytest.approx(summary["reduction"], abs=1e-6)
    by_steps = {p["steps"]: p for p in budget["probes"]}
    assert by_steps[budget["steps"]]["drop"] <= 0.05
    # The next prefix was measured and is over the budget (or the whole selection fits).
    assert budget["steps"] + 1 in by_steps and by_steps[budget["steps"] + 1]["drop"] > 0.05
    # The file's plan holds the search, and replaying it gives the same model.
    plan = api.stored_plan(out)
    assert plan["budget"] == budget and "replayed" not in plan
    code, again, err = _prune(cli, source, tmp_path / "again.onnx", "--plan", tmp_path / "out.plan.json")
    assert code == 0, err
    assert again["reduction"] == pytest.approx(summary["reduction"]) and again["pruned_units"] == summary["pruned_units"]


def test_a_loose_budget_keeps_the_whole_selection(cli, source, tmp_path):
    code, summary, err = _prune(cli, source, tmp_path / "out.onnx", "--max-drop", "0.9", "--ratio", "0.3")
    assert code == 0, err
    assert summary["reduction"] >= 0.3 and [p["steps"] for p in summary["budget"]["probes"]] == \
        [summary["budget"]["steps"]]


def test_no_prune_within_a_zero_budget_is_an_error_and_writes_nothing(cli, source, tmp_path):
    code, _, err = _prune(cli, source, tmp_path / "out.onnx", "--max-drop", "0")
    assert code != 0 and "no prune stays within it" in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (("--max-drop", "1.5"), "must be in [0, 1)"),
    (("--max-drop", "0.1", "--plan", "p.json"), "takes no --max-drop"),
])
def test_bad_budget_options(cli, source, tmp_path, argv, message):
    code, _, err = _prune(cli, source, tmp_path / "out.onnx", *argv)
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_bench_adds_an_interleaved_latency_ratio(cli, source, tmp_path):
    code, summary, err = _prune(cli, source, tmp_path / "out.onnx", "--ratio", "0.3", "--bench", "--threads", "1")
    assert code == 0, err
    bench = summary["bench"]
    assert bench["device"] == "cpu" and bench["runs"] >= 5 and bench["unpruned_ms"] > 0 and bench["pruned_ms"] > 0
    assert bench["ratio"] == pytest.approx(bench["pruned_ms"] / bench["unpruned_ms"], rel=0.5)
    code, out, err = cli("prune", source, tmp_path / "out2.onnx", "--ratio", "0.3", "--bench")
    assert code == 0 and "interleaved runs" in out and "ratio" in out


def test_a_ratio_dependent_selection_is_run_again_per_probe(cli, tmp_path):
    """Gromov-style whole-layer runs are not prefixes of each other: each probe selects on its own."""
    pytest.importorskip("optimum.exporters.onnx")
    import numpy as np

    from onnxdepth.export.hf import export_hf
    from tiny_hf import save_tiny_llama

    directory = save_tiny_llama(tmp_path / "llama", seed=1, vocab=96, hidden=32, layers=6, heads=4, kv_heads=2,
                                inter=64, initializer_range=0.2)
    path = export_hf(directory, tmp_path / "tg", task="text-generation")
    np.savez(tmp_path / "calib.npz", input_ids=np.random.default_rng(0).integers(0, 96, (64, 32)).astype(np.int64))
    code, summary, err = _prune(cli, path, tmp_path / "out.onnx", "--max-drop", "0.85", "--ratio", "0.59", "--calib",
                                tmp_path / "calib.npz", "--calib-sequences", "8", "--calib-length", "32")
    assert code == 0, err
    budget = summary["budget"]
    assert summary["fidelity"]["drop"] <= 0.85
    assert len(budget["probes"]) >= 2  # the upper selection was over the budget
    assert budget["selection_runs"] == len(budget["probes"])  # the upper run plus one per bisection probe
    assert api.stored_plan(tmp_path / "out.onnx")["selection"] == "fitted-run"
