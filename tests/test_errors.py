"""Typed errors keep their cause: one line by default, the cause chain under -v."""

from __future__ import annotations

import onnx

import graphs


def test_cause_chain_only_under_verbose(cli, tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(graphs.build_mlp(), model)
    plan = tmp_path / "plan.json"
    plan.write_text("{not json")
    out = tmp_path / "out.onnx"
    code, _, err = cli("prune", model, out, "--plan", plan)
    assert code == 1 and err.count("\n") == 1 and "not JSON" in err and not out.exists()
    code, _, err = cli("-v", "prune", model, out, "--plan", plan)
    assert code == 1 and "not JSON" in err.splitlines()[0]
    assert "caused by JSONDecodeError" in err and not out.exists()


def test_unreachable_ratio_exits_3_with_its_cause_free_message(cli, tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(graphs.build_mlp(), model)
    code, _, err = cli("-v", "prune", model, tmp_path / "out.onnx", "--ratio", "0.95")
    assert code == 3 and "not reachable" in err and "caused by" not in err
