"""The fidelity line every prune ends with: held-out data no selection saw, the kind's numbers, and the same
numbers from `onnxdepth eval --task fidelity` on the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphs
from onnxdepth import api
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.fidelity import fidelity_line, held_out_fidelity, held_out_inputs, model_kind


def _prune_json(cli, *argv) -> dict:
    code, out, err = cli("prune", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _eval_json(cli, *argv) -> dict:
    code, out, err = cli("eval", *argv, "--task", "fidelity", "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("builder, kind", [(graphs.build_residual, "image"), (graphs.build_mlp, "generic")])
def test_prune_line_equals_eval_on_the_same_data(cli, save_model, tmp_path, builder, kind):
    source = save_model(builder(), "in.onnx")
    pruned = _prune_json(cli, source, tmp_path / "out.onnx", "--ratio", "0.3")
    assert pruned["fidelity"]["kind"] == kind and pruned["fidelity"]["metric"] == "cosine"
    assert 0 < pruned["fidelity"]["value"] < 1  # a real prune changes the outputs
    again = _eval_json(cli, tmp_path / "out.onnx", "--reference", source)
    assert again["value"] == pytest.approx(pruned["fidelity"]["value"], abs=1e-6)
    assert again["data"] == pruned["fidelity"]["data"]
    # The plan in the file holds the same record.
    assert api.stored_plan(tmp_path / "out.onnx")["fidelity"]["value"] == pruned["fidelity"]["value"]


def test_the_cli_prints_the_line(cli, save_model, tmp_path):
    source = save_model(graphs.build_residual(), "in.onnx")
    code, out, err = cli("prune", source, tmp_path / "out.onnx", "--ratio", "0.3")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("fidelity vs unpruned"))
    code, again, err = cli("eval", tmp_path / "out.onnx", "--task", "fidelity", "--reference", source)
    assert code == 0, err
    # Same headline and data, different run time.
    assert again.strip().rsplit("(", 1)[0] == line.rsplit("(", 1)[0]


def test_ratio_zero_is_perfect_fidelity(save_model):
    model = graphs.build_residual()
    result = api.prune_model(model, PruneConfig(0.0))
    assert result.plan["fidelity"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert result.plan["fidelity"]["relative_error"] == pytest.approx(0.0, abs=1e-6)


def test_fidelity_can_be_skipped():
    result = api.prune_model(graphs.build_residual(), PruneConfig(0.3, fidelity=False))
    assert "fidelity" not in result.plan


def test_eval_needs_the_reference(cli, save_model, tmp_path):
    source = save_model(graphs.build_mlp(), "in.onnx")
    code, out, err = cli("eval", source, "--task", "fidelity")
    assert code != 0 and "--reference" in err and "Traceback" not in err


def test_eval_of_a_model_onnxdepth_did_not_prune_uses_the_defaults(cli, save_model):
    """No plan in the file: the calibration defaults and the model's own input shapes; itself: perfect."""
    source = save_model(graphs.build_residual(), "in.onnx")
    again = _eval_json(cli, source, "--reference", source)
    assert again["value"] == pytest.approx(1.0, abs=1e-6)


def test_the_held_out_images_are_not_the_calibration_images():
    """The fidelity draw skips the packaged photos every calibration draw starts with."""
    from onnxdepth.importance.taylor_calibration import model_image_inputs

    model = graphs.build_residual()
    shapes = {model.graph.input[0].name: tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)}
    kind = model_kind(model, shapes)
    held_out = held_out_inputs(model, Calibration(), shapes)
    shape = next(iter(shapes.values()))
    calibration = model_image_inputs(model, shape, None, kind=kind, count=32, flag="--calib")
    held = [next(iter(f.values())) for f in held_out.feeds]
    assert kind == "image" and len(held) == 8
    assert not any(np.array_equal(a, b) for a in held for b in calibration)


def test_line_of_a_missing_check_says_why():
    assert fidelity_line({"kind": "lm", "value": None, "reason": "text too short"}) == \
        "fidelity: n/a (text too short)"


def test_a_pruned_model_against_a_different_parent_scores_lower(save_model):
    parent = graphs.build_residual(seed=0)
    other = graphs.build_residual(seed=1)
    shapes = {parent.graph.input[0].name: tuple(d.dim_value for d in parent.graph.input[0].type.tensor_type.shape.dim)}
    same = held_out_fidelity(parent, parent, Calibration(), shapes)
    different = held_out_fidelity(other, parent, Calibration(), shapes)
    assert same["value"] == pytest.approx(1.0, abs=1e-6) and different["value"] < 0.99


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random Llama export and a calibration .npz long enough for the fits and the fidelity rows."""
    pytest.importorskip("optimum.exporters.onnx")
    from onnxdepth.export.hf import export_hf
    from tiny_hf import save_tiny_llama

    root = tmp_path_factory.mktemp("fidelity_lm")
    directory = save_tiny_llama(root / "llama", seed=1, vocab=96, hidden=32, layers=4, heads=4, kv_heads=2,
                                inter=64, initializer_range=0.2)
    path = export_hf(directory, root / "tg", task="text-generation")
    rows = np.random.default_rng(0).integers(0, 96, (64, 32)).astype(np.int64)
    np.savez(root / "calib.npz", input_ids=rows)
    return path, root / "calib.npz"


def test_a_language_model_gets_top1_agreement_and_kl_and_eval_agrees(cli, tiny_lm, tmp_path):
    path, calib = tiny_lm
    out = tmp_path / "out.onnx"
    pruned = _prune_json(cli, path, out, "--ratio", "0.3", "--calib", calib, "--calib-sequences", "8",
                         "--calib-length", "32")
    fidelity = pruned["fidelity"]
    assert (fidelity["kind"], fidelity["metric"]) == ("lm", "top1_agreement")
    assert 0 <= fidelity["value"] < 1 and fidelity["kl"] > 0
    assert "held-out tokens of" in fidelity["data"] and str(calib) in fidelity["data"]
    again = _eval_json(cli, out, "--reference", path)
    assert (again["measure"], again["data"]) == ("top1_agreement", fidelity["data"])
    assert again["value"] == pytest.approx(fidelity["value"], abs=1e-9)
    assert again["kl"] == pytest.approx(fidelity["kl"], rel=1e-6)
    # Other data gives other numbers: the eval reads the plan's calibration unless told otherwise.
    other = _eval_json(cli, out, "--reference", path, "--seed", "5", "--calib-length", "16")
    assert other["kl"] != pytest.approx(fidelity["kl"], rel=1e-6)
