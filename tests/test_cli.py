"""The command line, in-process through onnxdepth.cli.main (plus one real subprocess per command kind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphs
import helpers
from onnxdepth.config import PruneConfig
from onnxdepth import api
from onnxdepth.errors import RatioUnreachableError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
UNIT_KEYS = {"id", "op", "params", "in_channels", "out_channels", "changes_channels", "prunable",
             "excluded_reason"}
SUMMARY_KEYS = {"candidates", "excluded", "prunable", "prunable_reduced"}


@pytest.fixture
def model_path(save_model):
    """upsample_concat saved as in.onnx: 0.2 is reachable (one unit, 0.27), 0.95 is not (0.895 at most)."""
    return save_model(graphs.build_upsample_concat(), "in.onnx")


def _listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# -- units ----------------------------------------------------------------------------------------------

def test_units_json_schema(cli, model_path):
    code, out, err = cli("units", model_path, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == {"units", "summary"}
    units = data["units"]
    assert len(units) == graphs.count_layers(graphs.build_upsample_concat())
    for unit in units:
        assert UNIT_KEYS <= set(unit)
        assert isinstance(unit["id"], str) and unit["op"] in ("Conv", "MatMul", "Gemm")
        for key in ("params", "in_channels", "out_channels"):
            assert isinstance(unit[key], int) and unit[key] > 0
        assert isinstance(unit["changes_channels"], bool) and isinstance(unit["prunable"], bool)
        assert unit["changes_channels"] == (unit["in_channels"] != unit["out_channels"])
        assert unit["prunable"] == (unit["excluded_reason"] is None)
    summary = data["summary"]
    assert SUMMARY_KEYS <= set(summary)
    assert summary == {"candidates": 4, "excluded": {"changes spatial dims": 1}, "prunable": 3,
                       "prunable_reduced": 1, "head": 1, "user_excluded": 0}
    assert summary["prunable"] + sum(summary["excluded"].values()) == summary["candidates"]
    assert summary["prunable"] == sum(u["prunable"] for u in units)


def test_units_json_with_exclude(cli, model_path):
    code, out, _ = cli("units", model_path, "--json", "--exclude", "^conv_0$")
    assert code == 0
    data = json.loads(out)
    by_id = {u["id"]: u for u in data["units"]}
    assert by_id["conv_0"]["excluded_reason"] == "user exclude"
    assert data["summary"]["user_excluded"] == 1 and data["summary"]["prunable"] == 2


def test_units_table(cli, model_path):
    code, out, err = cli("units", model_path)
    assert code == 0 and err == ""
    assert "candidates 4" in out and "prunable 3" in out
    assert "graph head" in out and "changes spatial dims" in out


# -- prune ----------------------------------------------------------------------------------------------

def test_prune_json(cli, model_path, tmp):
    out_path = tmp / "out.onnx"
    code, out, err = cli("prune", model_path, out_path, "--ratio", "0.2", "--json")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == {"params_before", "params_after", "reduction", "pruned_units", "fidelity"}
    # The held-out fidelity line's numbers, as the plan records them.
    assert 0.0 <= summary["fidelity"]["value"] <= 1.0
    assert summary["fidelity"]["drop"] == pytest.approx(1.0 - summary["fidelity"]["value"], abs=1e-6)
    assert summary["reduction"] >= 0.2
    assert summary["params_after"] < summary["params_before"]
    assert summary["reduction"] == pytest.approx(1 - summary["params_after"] / summary["params_before"], abs=1e-6)
    assert summary["pruned_units"]

    # OUT and OUT-stem.plan.json, nothing else (no temporary files left).
    plan_path = tmp / "out.plan.json"
    assert _listing(tmp) == {"in.onnx", "out.onnx", "out.plan.json"}
    pruned = onnx.load(str(out_path))
    onnx.checker.check_model(pruned, full_check=True)
    assert graphs.count_layers(pruned) == graphs.count_layers(onnx.load(str(model_path))) - len(
        summary["pruned_units"])
    plan = json.loads(plan_path.read_text())
    assert plan["pruned_units"] == summary["pruned_units"]
    assert plan["params_after"] == summary["params_after"]
    assert plan["source"] == str(model_path)
    meta = json.loads(next(p.value for p in pruned.metadata_props if p.key == api.PLAN_METADATA_KEY))
    assert meta["pruned_units"] == summary["pruned_units"]

    # The usual file mode (mkstemp's 0600 is not kept).
    umask = os.umask(0)
    os.umask(umask)
    for path in (out_path, plan_path):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_prune_text_output_and_progress(cli, model_path, tmp):
    out_path = tmp / "out.onnx"
    code, out, err = cli("prune", model_path, out_path, "--ratio", "0.2")
    assert code == 0
    assert str(out_path) in out and "plan in" in out and "removed" in out
    progress = err.strip().splitlines()
    assert progress and all(line.lstrip().startswith("pruned ") for line in progress)
    assert out_path.exists() and (tmp / "out.plan.json").exists()


def test_prune_ratio_zero_keeps_outputs(cli, model_path, tmp):
    out_path = tmp / "zero.onnx"
    code, out, _ = cli("prune", model_path, out_path, "--ratio", "0", "--json")
    assert code == 0
    assert json.loads(out)["pruned_units"] == []
    original, pruned = onnx.load(str(model_path)), onnx.load(str(out_path))
    expected, actual = helpers.run_both(original, pruned)
    assert np.array_equal(expected[0], actual[0])


# -- failures: one line, non-zero exit, nothing written ---------------------------------------------------

def _make_case(case: str, tmp: Path, model_path: Path):
    """(argv, expected exit code, expected message fragment, path that must not exist)."""
    out = tmp / "out.onnx"
    if case == "text-file":
        src = tmp / "notes.onnx"
        src.write_text("this is not an ONNX model\n")
        return ["prune", src, out, "--ratio", "0.2"], 1, "not a valid ONNX file", out
    if case == "truncated":
        src = tmp / "half.onnx"
        data = model_path.read_bytes()
        src.write_bytes(data[: len(data) // 2])
        return ["prune", src, out, "--ratio", "0.2"], 1, str(src), out
    if case == "external-data-missing":
        src = tmp / "ext.onnx"
        onnx.save_model(graphs.build_upsample_concat(), str(src), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="w.data", size_threshold=0)
        assert (tmp / "w.data").exists()
        (tmp / "w.data").unlink()
        return ["prune", src, out, "--ratio", "0.2"], 1, "external data", out
    if case == "missing-input":
        return ["prune", tmp / "nope.onnx", out, "--ratio", "0.2"], 1, "no such file", out
    if case == "ratio-negative":
        return ["prune", model_path, out, "--ratio", "-0.1"], 1, "--ratio -0.1: must be in [0, 1)", out
    if case == "ratio-one":
        return ["prune", model_path, out, "--ratio", "1.0"], 1, "must be in [0, 1)", out
    if case == "unreachable":
        return ["prune", model_path, out, "--ratio", "0.95", "--json"], 3, "largest reachable reduction", out
    if case == "out-equals-in":
        return ["prune", model_path, model_path, "--ratio", "0.2"], 1, "equals the input", None
    if case == "out-dir-missing":
        missing = tmp / "no" / "such" / "dir" / "out.onnx"
        return ["prune", model_path, missing, "--ratio", "0.2"], 1, "does not exist", missing
    if case == "out-dir-readonly":
        if IS_ROOT:
            # root ignores chmod 0o555; /proc/self is a directory that refuses new files even to root.
            target = Path("/proc/self/out.onnx")
        else:
            ro = tmp / "ro"
            ro.mkdir()
            ro.chmod(0o555)
            target = ro / "out.onnx"
        return ["prune", model_path, target, "--ratio", "0.2"], 1, "not writable", target
    if case == "out-is-dir":
        (tmp / "adir").mkdir()
        return ["prune", model_path, tmp / "adir", "--ratio", "0.2"], 1, "is a directory", None
    if case == "importance-taylor":
        # A CNN that is not an image detector: the Taylor sidecar has no label-free loss for it.
        return ["prune", model_path, out, "--ratio", "0.2", "--importance", "taylor"], 1, "taylor", out
    if case == "importance-cross-entropy":
        return ["prune", model_path, out, "--ratio", "0.2", "--importance", "cross_entropy"], 1, "transformer", out
    if case == "bad-exclude-regex":
        return ["prune", model_path, out, "--ratio", "0.2", "--exclude", "conv_["], 1, "--exclude", out
    if case == "bad-input-shape":
        return ["prune", model_path, out, "--ratio", "0.2", "--input-shape", "x:1xQ"], 1, "--input-shape", out
    if case == "units-text-file":
        src = tmp / "notes.onnx"
        src.write_text("hello")
        return ["units", src], 1, "not a valid ONNX file", None
    raise AssertionError(case)


BAD_CASES = ["text-file", "truncated", "external-data-missing", "missing-input", "ratio-negative", "ratio-one",
             "unreachable", "out-equals-in", "out-dir-missing", "out-dir-readonly", "out-is-dir",
             "importance-taylor", "importance-cross-entropy", "bad-exclude-regex", "bad-input-shape", "units-text-file"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input(cli, tmp, model_path, case):
    argv, expected_code, fragment, must_not_exist = _make_case(case, tmp, model_path)
    source_bytes = model_path.read_bytes()
    before = _listing(tmp)

    code, out, err = cli(*argv)

    assert code == expected_code, err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxdepth: error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err and "internal error" not in err
    assert out == ""
    if must_not_exist is not None:
        assert not must_not_exist.exists()
        assert not must_not_exist.with_name(must_not_exist.stem + ".plan.json").exists()
    assert _listing(tmp) == before  # no OUT, no plan, no leftover temporary file
    assert model_path.read_bytes() == source_bytes


def test_unreachable_ratio_message_gives_the_largest_reduction(cli, model_path, tmp):
    with pytest.raises(RatioUnreachableError) as info:
        api.prune_model(graphs.build_upsample_concat(), PruneConfig(0.95))
    code, _, err = cli("prune", model_path, tmp / "out.onnx", "--ratio", "0.95", "--json")
    assert code == 3
    assert f"largest reachable reduction is {info.value.reachable:.4f}" in err
    assert info.value.reachable < 0.95


def test_unreachable_ratio_without_json_ends_with_one_error_line(cli, model_path, tmp):
    """Without --json the progress lines come first; the failure itself is still exactly one line."""
    code, out, err = cli("prune", model_path, tmp / "out.onnx", "--ratio", "0.95")
    assert code == 3 and out == ""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("onnxdepth:")]
    assert len(errors) == 1 and lines[-1] == errors[0]
    assert errors[0].startswith("onnxdepth: error: ratio 0.95 is not reachable")
    assert len(lines) > 1 and all(line.lstrip().startswith("pruned ") for line in lines[:-1])  # progress first
    assert _listing(tmp) == {"in.onnx"}


def test_usage_error_exits_2(cli, model_path, tmp):
    with pytest.raises(SystemExit) as info:
        cli("prune", model_path, tmp / "out.onnx", "--ratio", "abc")
    assert info.value.code == 2
    assert not (tmp / "out.onnx").exists()


def test_unwritable_directory_that_passes_access_check(cli, model_path):
    code, out, err = cli("prune", model_path, "/proc/out.onnx", "--ratio", "0.2", "--json")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("onnxdepth: error: ")
    assert "internal error" not in err
    assert not Path("/proc/out.onnx").exists()


def test_temp_file_creation_failure_is_an_output_write_error(monkeypatch, model_path, tmp):
    from onnxdepth.errors import OutputWriteError
    from onnxdepth.graph import io

    real_mkstemp = io.tempfile.mkstemp

    def failing_mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == tmp:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", failing_mkstemp)
    with pytest.raises(OutputWriteError):
        api.prune_file(model_path, tmp / "out.onnx", PruneConfig(0.2))


# -- real processes ---------------------------------------------------------------------------------------

def _subprocess(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "onnxdepth.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_subprocess_error_has_no_traceback(tmp, model_path):
    data = model_path.read_bytes()
    truncated = tmp / "half.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    proc = _subprocess("prune", truncated, tmp / "out.onnx", "--ratio", "0.2", cwd=tmp)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxdepth: error:")
    assert not (tmp / "out.onnx").exists()


def test_subprocess_prune_json(tmp, model_path):
    proc = _subprocess("prune", model_path, "out.onnx", "--ratio", "0.2", "--json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["reduction"] >= 0.2
    assert (tmp / "out.onnx").exists() and (tmp / "out.plan.json").exists()


def test_ort_fused_ops_it_cannot_rewrite_are_refused(cli, tmp):
    """A fused op whose weights the passes cannot see (ORT's packed-weight Attention) gets a one-line refusal;
    a skip-norm (GenAI builder, ORT optimizer) is read: split into Add + norm, the graph's units listed."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 24], [0.1] * 192)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [24], [0.0] * 24)
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2)
    model = helper.make_model(helper.make_graph([node], "fused", [x], [y], [weight, bias]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp / "fused.onnx"
    onnx.save(model, path)
    code, out, err = cli("prune", path, tmp / "out.onnx", "--ratio", "0.1")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert "fused ops onnxdepth cannot rewrite (Attention)" in err
    assert not (tmp / "out.onnx").exists()
    gamma = helper.make_tensor("gamma", TensorProto.FLOAT, [8], [1.0] * 8)
    skip = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "x", "gamma"], ["y"], domain="com.microsoft")
    model = helper.make_model(helper.make_graph([skip], "skip", [x], [y], [gamma]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, path)
    code, out, err = cli("units", path)
    assert code == 0, err


def test_plan_replay_is_byte_identical(cli, model_path, tmp):
    """`prune --plan OUT.plan.json` reproduces the pruned model exactly, without selecting anything."""
    code, out, err = cli("prune", model_path, tmp / "a.onnx", "--ratio", "0.3", "--json")
    assert code == 0, err
    code, out2, err = cli("prune", model_path, tmp / "b.onnx", "--plan", tmp / "a.plan.json", "--json")
    assert code == 0, err
    assert json.loads(out2)["pruned_units"] == json.loads(out)["pruned_units"]
    a, b = onnx.load(tmp / "a.onnx"), onnx.load(tmp / "b.onnx")
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    assert [t.SerializeToString() for t in a.graph.initializer] == [t.SerializeToString() for t in b.graph.initializer]


def test_plan_replay_errors(cli, model_path, tmp):
    bad = tmp / "bad.json"
    bad.write_text("{\"steps\": [{\"unit\": \"no_such_unit\"}]}")
    code, _, err = cli("prune", model_path, tmp / "o.onnx", "--plan", bad)
    assert code == 1 and err.startswith("onnxdepth: error:") and err.count("\n") == 1
    code, _, err = cli("prune", model_path, tmp / "o.onnx")
    assert code == 1 and "--ratio" in err
    assert not (tmp / "o.onnx").exists()


def test_timeout_stops_with_exit_124_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    import onnx

    # A model big enough that a prune takes longer than the timeout: a deep residual CNN.
    from graphs import build_residual

    src = tmp_path / "in.onnx"
    onnx.save_model(build_residual(), str(src))
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-m", "onnxdepth.cli", "--timeout", "0.05", "prune", str(src), str(out),
                          "--ratio", "0.3", "--importance", "angular"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 124, run.stderr
    assert "--timeout 0.05: stopped" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
