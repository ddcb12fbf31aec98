"""--compensate lstsq: ridge fits, folds into MatMul / Gemm / bias layouts, and the residual-run refit on a tiny Llama."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("optimum")
pytest.importorskip("optimum.exporters.onnx")

from onnxdepth import api  # noqa: E402
from onnxdepth.compensate import lstsq, stream_writers  # noqa: E402
from onnxdepth.compensate.fold import fold_output_map  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.errors import InvalidArgumentError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.importance.angular import model_feeds  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402
from onnxdepth.runtime import open_session  # noqa: E402
from tiny_hf import save_tiny_llama  # noqa: E402

import graphs  # noqa: E402

LAYERS, SEQ_LEN, N_SEQ, HELD_OUT = 4, 16, 64, 8


# -- least squares and folds ----------------------------------------------------------------------------
def test_normal_equations_recover_an_exact_map_from_batches():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(6, 4))
    equations = lstsq.NormalEquations()
    for _ in range(5):  # five batches of [2, 20, 6] rows: leading axes are tokens
        x = rng.normal(size=(2, 20, 6))
        equations.add(x, x @ truth)
    assert equations.rows == 200
    assert np.allclose(equations.solve(ridge=1e-12), truth, atol=1e-8)
    # The ridge pulls the map towards zero, never away from the data.
    assert np.linalg.norm(equations.solve(ridge=10.0)) < np.linalg.norm(truth)


def _linear_model(op: str, trans_b: int = 0, bias_add: bool = False, shared: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(4, 5) if not trans_b else (5, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W")]
    if op == "Gemm":
        inits.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "C"))
        nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="lin", transB=trans_b, alpha=0.5)]
    else:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m" if bias_add else "y"], name="lin")]
        if bias_add:
            inits.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b"))
            nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="bias"))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])]
    if shared:  # a second node reads the same initializer: it must keep the old weight
        other_inputs = ["x", "W", "C"] if op == "Gemm" else ["x", "W"]
        nodes.append(helper.make_node(op, other_inputs, ["z"], name="other", **({"transB": trans_b} if op == "Gemm"
                                                                                  else {})))
        outputs.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [3, 5]))
    graph = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 4])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, trans_b, bias_add", [("MatMul", 0, False), ("MatMul", 0, True), ("Gemm", 0, False),
                                                   ("Gemm", 1, False)])
def test_fold_output_map_computes_y_times_t(op, trans_b, bias_add):
    model = _linear_model(op, trans_b, bias_add, shared=True)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    before = open_session(model).run(None, {"x": x})
    transform = np.random.default_rng(3).normal(size=(5, 5))
    graph = gs.import_onnx(model)
    node = next(n for n in graph.nodes if n.name == "lin")
    fold_output_map(node, graph.tensors()["y"], transform)
    after = open_session(gs.export_onnx(graph)).run(None, {"x": x})
    assert np.allclose(after[0], before[0] @ transform, atol=1e-4)
    assert np.array_equal(after[1], before[1])  # the node sharing W still computes with the old W


# -- the residual refit on a tiny Llama -------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> types.SimpleNamespace:
    root = tmp_path_factory.mktemp("compensate")
    directory = save_tiny_llama(root / "llama", seed=1, vocab=96, hidden=32, layers=LAYERS, heads=4, kv_heads=2,
                                inter=64, tie_word_embeddings=True, initializer_range=0.2, norm_noise=0.1)
    path = export_hf(directory, root / "tg", task="text-generation")
    rows = np.random.default_rng(0).integers(0, 96, (N_SEQ + HELD_OUT + 8, SEQ_LEN)).astype(np.int64)
    np.savez(root / "calib.npz", input_ids=rows)
    calibration = Calibration(str(root / "calib.npz"), N_SEQ, SEQ_LEN, model_path=str(path),
                              held_out_sequences=HELD_OUT)
    check = rows[N_SEQ + HELD_OUT:]  # rows neither the fit nor its held-out check saw
    return types.SimpleNamespace(path=path, model=onnx.load(str(path)), calibration=calibration, check=check)


def _logits(model: onnx.ModelProto, tokens: np.ndarray) -> np.ndarray:
    session = open_session(model)
    inputs = {i.name: i for i in session.get_inputs()}
    return session.run(["logits"], model_feeds(inputs, tokens))[0]


def test_writers_of_a_llama_are_two_per_layer_in_stream_order(llama):
    writers = stream_writers(PruneSession(llama.model))
    assert [w.unit for w in writers] == [f"layer{l}.{k}" for l in range(LAYERS) for k in ("attention", "mlp")]
    assert all(a.stream_out != b.stream_out for a, b in zip(writers, writers[1:]))


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_lstsq_folds_a_fit_that_brings_the_logits_closer(llama, granularity):
    config = PruneConfig(0.2, granularity=granularity, importance="angular", calibration=llama.calibration,
                         compensate="none")
    plain = api.prune_model(llama.model, config)
    fitted = api.prune_model(llama.model, PruneConfig(0.2, granularity=granularity, importance="angular",
                                                      calibration=llama.calibration, compensate="lstsq"))
    assert plain.plan["compensation"] == {"method": "none", "fits": []}
    fits = fitted.plan["compensation"]["fits"]
    assert fitted.plan["compensation"]["method"] == "lstsq" and fits
    folded = [f for f in fits if f["folded"]]
    assert folded and all(f["held_out_error"]["after"] < f["held_out_error"]["before"] for f in folded)
    assert fitted.params_after == count_params(fitted.model) <= plain.params_after  # no parameter added
    # The same units without the fits: the fits bring the logits closer to the unpruned model's.
    same_units = api.replay_plan(llama.model, {"granularity": granularity, "steps": fitted.plan["steps"]})
    assert same_units.pruned_units == fitted.pruned_units
    reference = _logits(llama.model, llama.check)
    error = {name: float(np.mean((_logits(r.model, llama.check) - reference) ** 2))
             for name, r in (("unfitted", same_units), ("fitted", fitted))}
    assert error["fitted"] < error["unfitted"], error


def count_params(model: onnx.ModelProto) -> int:
    from onnxdepth.params import count_params_proto

    return count_params_proto(model)


def test_replay_of_a_compensated_plan_gives_the_same_weights(llama):
    config = PruneConfig(0.2, granularity="block", importance="angular", calibration=llama.calibration,
                         compensate="lstsq")
    result = api.prune_model(llama.model, config)
    replayed = api.replay_plan(llama.model, result.plan)
    assert replayed.plan["compensation"]["fits"] == result.plan["compensation"]["fits"]
    weights = {t.name: t.raw_data for t in result.model.graph.initializer}
    again = {t.name: t.raw_data for t in replayed.model.graph.initializer}
    assert weights.keys() == again.keys() and all(weights[k] == again[k] for k in weights)


def test_a_fit_that_does_not_help_on_held_out_windows_is_not_folded(llama, monkeypatch):
    from onnxdepth.compensate import residual

    # A map that maps everything to zero removes the fold writer's contribution: worse, never folded.
    monkeypatch.setattr(residual.NormalEquations, "solve", lambda self, **kw: np.zeros_like(self.cross))
    config = PruneConfig(0.2, granularity="block", importance="angular", calibration=llama.calibration,
                         compensate="lstsq")
    result = api.prune_model(llama.model, config)
    fits = [f for f in result.plan["compensation"]["fits"] if f["writer"] is not None]
    assert fits and not any(f["folded"] for f in fits)
    assert all(f["reason"] == "the fit does not lower the held-out error" for f in fits)


def test_lstsq_is_refused_where_it_does_not_apply_yet():
    with pytest.raises(InvalidArgumentError, match="--compensate lstsq: not yet supported"):
        api.prune_model(graphs.build_mlp(), PruneConfig(0.2, compensate="lstsq"))
    # auto refits a CNN's surviving Convs on the packaged photos (no --calib needed) ...
    compensation = api.prune_model(graphs.build_residual(), PruneConfig(0.2, compensate="auto")).plan["compensation"]
    assert compensation["method"] == "lstsq" and compensation["fits"]
    # ... and leaves a model with neither a residual stream nor an image input as it is.
    assert api.prune_model(graphs.build_mlp(), PruneConfig(0.2, compensate="auto")).plan["compensation"] == \
        {"method": "none", "fits": []}


def test_the_default_with_calibration_is_the_compensated_block_mode(llama, tmp_path):
    """`auto` (every default): whole layers, angular, lstsq, on --calib or on text sampled from the model.
    The plan records what was resolved."""
    fitted = api.prune_model(llama.model, PruneConfig(0.2, calibration=llama.calibration))
    assert (fitted.plan["importance"], fitted.plan["granularity"], fitted.plan["compensate"]) == \
        ("angular", "block", "lstsq")
    assert fitted.plan["selection"] == "fitted-run" and fitted.plan["compensation"]["method"] == "lstsq"
    assert len(fitted.plan["fitted_runs"]) >= 2  # candidate runs, each measured with its fit
    assert any(f["folded"] for f in fitted.plan["compensation"]["fits"])
    # No --calib, a tokenizer beside the model: text sampled from the model, the same resolved mode.
    beside = _with_tokenizer(llama.path, tmp_path)
    plain = api.prune_model(llama.model, PruneConfig(0.2, calibration=Calibration(model_path=str(beside),
                                                                               sequences=8, length=32)))
    assert (plain.plan["importance"], plain.plan["granularity"], plain.plan["compensate"]) == \
        ("angular", "block", "lstsq")
    assert plain.plan["calibration"]["source"] is None
    assert "text sampled from the model" in plain.plan["fidelity"]["data"]
    # Without a tokenizer beside the model no text can be drawn: the data-free defaults, with a warning; the
    # fidelity line falls back to random token ids.
    bare = api.prune_model(llama.model, PruneConfig(0.2, calibration=Calibration(model_path=str(llama.path))))
    assert (bare.plan["importance"], bare.plan["granularity"], bare.plan["compensate"]) == \
        ("magnitude", "fine", "none")
    assert "random token ids" in bare.plan["fidelity"]["data"] and 0 <= bare.plan["fidelity"]["value"] <= 1
    # An explicit importance keeps today's fine granularity; the fit still applies with calibration.
    explicit = api.prune_model(llama.model, PruneConfig(0.2, importance="angular", calibration=llama.calibration))
    assert (explicit.plan["granularity"], explicit.plan["compensate"]) == ("fine", "lstsq")


def _with_tokenizer(model_path: Path, directory: Path) -> Path:
    """A copy of the export at MODEL_PATH with a 96-word word-level tokenizer (ids 0..95; <s> is 1) beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(model_path.parent, directory / "with_tokenizer")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(93))])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>") \
        .save_pretrained(directory / "with_tokenizer")
    return directory / "with_tokenizer" / model_path.name


def test_a_fold_writer_before_any_pruning_is_fitted_from_the_unpruned_pass(llama, monkeypatch):
    """The shortcut (no pruned-model run when nothing before the fold writer changed) fits the same map."""
    from onnxdepth.compensate import residual

    config = PruneConfig(0.2, granularity="block", importance="angular", calibration=llama.calibration,
                         compensate="lstsq")
    fast = api.prune_model(llama.model, config)
    assert any(f["folded"] for f in fast.plan["compensation"]["fits"])
    monkeypatch.setattr(residual, "_untouched_before", lambda fold, pruned: False)
    slow = api.prune_model(llama.model, config)
    assert slow.pruned_units == fast.pruned_units
    fast_weights = {t.name: numpy_helper.to_array(t) for t in fast.model.graph.initializer}
    slow_weights = {t.name: numpy_helper.to_array(t) for t in slow.model.graph.initializer}
    assert fast_weights.keys() == slow_weights.keys()
    assert all(np.allclose(fast_weights[k], slow_weights[k], rtol=1e-4, atol=1e-5) for k in fast_weights)


def test_score_prints_both_damages_and_prune_reads_the_table_back(llama, cli, tmp_path):
    """`score --compensate lstsq`: each block / run row has its plain angular damage and the one left after
    its fit (never larger on the rows a fit helps); the CSV reads back, and prune --scores uses the plain one."""
    from onnxdepth.scores import ScoreTable

    out = tmp_path / "scores.csv"
    code, _, err = cli("score", llama.path, "--importance", "angular", "--granularity", "block", "--compensate",
                       "lstsq", "--calib", llama.calibration.source, "--calib-sequences", N_SEQ, "--calib-length",
                       SEQ_LEN, "-o", out)
    assert code == 0, err
    header, *rows = out.read_text().splitlines()
    assert header == "unit,score,after_fit"
    table = ScoreTable.read_csv(str(out))
    assert set(table.after_fit) == set(table.rows())  # every block and run has both damages
    assert any(table.after_fit[name] < value for name, value in table.rows().items())
    code, _, err = cli("score", llama.path, "--importance", "magnitude", "--compensate", "lstsq")
    assert code == 1 and "not yet supported" in err and "Traceback" not in err


@pytest.mark.parametrize("windows", ["held", "all"])
def test_choose_fitted_run_measures_candidates_by_likelihood(llama, monkeypatch, windows):
    """Every shortlisted run gets a finite NLL on the chosen windows; the pick is the lowest of them."""
    from onnxdepth.compensate import runs

    monkeypatch.setattr(runs, "NLL_WINDOWS", windows)
    writers = stream_writers(PruneSession(llama.model))
    first, records = runs.choose_fitted_run(llama.model, writers, llama.calibration.tokens(),
                                            llama.calibration.held_out_tokens(), 2, candidates=3)
    assert len(records) == 3 and all(np.isfinite(r["nll"]) and r["nll"] > 0 for r in records)
    assert first == min(records, key=lambda r: r["nll"])["first"] and 0 <= first <= LAYERS - 2
