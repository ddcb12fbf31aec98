"""--compensate lstsq on post-norm encoders: the fit of each site kind, and the refit of a tiny BERT."""

from __future__ import annotations

import types

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

from onnxdepth.compensate import postnorm
from onnxdepth.compensate.postnorm_sites import CONSUMER, NORM, WRITER, LiveSite, Site
from onnxdepth.runtime import open_session

HIDDEN, ROWS = 6, 64


# -- one site at a time, on a hand-built graph ----------------------------------------------------------------
def _site_graph() -> onnx.ModelProto:
    """x -> MatMul(W) + b -> y; r + y -> LayerNormalization -> n; a second MatMul shares W (-> z)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "b"),
             numpy_helper.from_array(np.ones(HIDDEN, np.float32), "g"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="lin"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
             helper.make_node("Add", ["r", "y"], ["s"], name="residual"),
             helper.make_node("LayerNormalization", ["s", "g", "beta"], ["n"], name="norm", epsilon=1e-5),
             helper.make_node("MatMul", ["x", "W"], ["z"], name="other")]
    value = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [ROWS, HIDDEN])  # noqa: E731
    graph = helper.make_graph(nodes, "site", [value("x"), value("r")], [value("y"), value("n"), value("z")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(graph: gs.Graph, x: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    session = open_session(gs.export_onnx(graph))
    return dict(zip(["y", "n", "z"], session.run(["y", "n", "z"], {"x": x, "r": r})))


def _live(graph: gs.Graph, kind: str) -> LiveSite:
    tensors = graph.tensors()
    if kind == NORM:
        node = next(n for n in graph.nodes if n.name == "norm")
        return LiveSite(Site(NORM, 0, 0, "norm", "n"), node, tensors["n"], "s")
    node = next(n for n in graph.nodes if n.name == "lin")
    site = Site(kind, 0, 0, "lin", "y", "s" if kind == WRITER else None)
    return LiveSite(site, node, tensors["y"], "x", "r" if kind == WRITER else None)


@pytest.mark.parametrize("kind", [CONSUMER, WRITER])
def test_an_exactly_linear_change_is_refitted_to_float_tolerance(kind):
    rng = np.random.default_rng(1)
    graph = gs.import_onnx(_site_graph())
    x, r = (rng.normal(size=(ROWS, HIDDEN)).astype(np.float32) for _ in range(2))
    truth, shift = rng.normal(size=(HIDDEN, HIDDEN)), rng.normal(size=HIDDEN)
    wanted = x @ truth + shift  # what the unpruned model computed there (a writer: its sum minus the residual)
    target = wanted + r if kind == WRITER else wanted
    before = _run(graph, x, r)
    calib = {"x": [x[:48]], "r": [r[:48]]}
    held = {"x": [x[48:]], "r": [r[48:]]}
    record = postnorm._fit_site(_live(graph, kind), calib, held, [target[:48]], [target[48:]])
    assert record["folded"] and record["held_out_error"]["after"] < 1e-9 < record["held_out_error"]["before"]
    after = _run(graph, x, r)
    assert np.allclose(after["y"], wanted, atol=1e-3)
    assert np.array_equal(after["z"], before["z"])  # the node sharing W still computes with the old W


def test_a_layer_norm_affine_is_refitted_to_float_tolerance():
    rng = np.random.default_rng(2)
    graph = gs.import_onnx(_site_graph())
    s = rng.normal(size=(ROWS, HIDDEN))
    scale, shift = rng.normal(size=HIDDEN), rng.normal(size=HIDDEN)
    target = postnorm._standardised(s, 1e-5) * scale + shift
    record = postnorm._fit_site(_live(graph, NORM), {"s": [s[:48]]}, {"s": [s[48:]]}, [target[:48]], [target[48:]])
    assert record["folded"] and record["held_out_error"]["after"] < 1e-9
    norm = next(n for n in graph.nodes if n.name == "norm")
    assert np.allclose(norm.inputs[1].values, scale, atol=1e-4) and np.allclose(norm.inputs[2].values, shift, atol=1e-4)


def test_an_unchanged_input_is_not_refitted():
    rng = np.random.default_rng(3)
    graph = gs.import_onnx(_site_graph())
    x, r = (rng.normal(size=(ROWS, HIDDEN)).astype(np.float32) for _ in range(2))
    target = _run(graph, x, r)["y"]  # the pruned model already computes the unpruned output
    record = postnorm._fit_site(_live(graph, CONSUMER), {"x": [x[:48]]}, {"x": [x[48:]]}, [target[:48]],
                                [target[48:]])
    assert not record["folded"] and record["reason"] == "its input is unchanged by pruning"


# -- a tiny BERT, end to end -----------------------------------------------------------------------------------
LAYERS, SEQ_LEN, N_SEQ, HELD_OUT = 4, 16, 24, 8


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> types.SimpleNamespace:
    pytest.importorskip("optimum.exporters.onnx")
    pytest.importorskip("torch")
    from onnxdepth.config import Calibration
    from onnxdepth.export.hf import export_hf
    from tiny_hf import save_tiny_bert

    root = tmp_path_factory.mktemp("postnorm")
    directory = save_tiny_bert(root / "bert", seed=0, vocab=96, hidden=32, layers=LAYERS, heads=2, inter=64)
    path = export_hf(directory, root / "fe", task="feature-extraction")
    rows = np.random.default_rng(0).integers(0, 96, (N_SEQ + HELD_OUT + 8, SEQ_LEN)).astype(np.int64)
    np.savez(root / "calib.npz", input_ids=rows)
    calibration = Calibration(str(root / "calib.npz"), N_SEQ, SEQ_LEN, model_path=str(path),
                              held_out_sequences=HELD_OUT)
    return types.SimpleNamespace(model=onnx.load(str(path)), calibration=calibration, check=rows[N_SEQ + HELD_OUT:])


def _hidden(model: onnx.ModelProto, tokens: np.ndarray) -> np.ndarray:
    from onnxdepth.importance.angular import model_feeds

    session = open_session(model)
    inputs = {i.name: i for i in session.get_inputs()}
    return session.run(["last_hidden_state"], model_feeds(inputs, tokens))[0]


def _matrix_elements(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2)


def test_a_bert_has_post_norm_sites_and_no_pre_norm_writers(bert):
    from onnxdepth.compensate import postnorm_sites, stream_writers
    from onnxdepth.prune.session import PruneSession

    session = PruneSession(bert.model)
    assert stream_writers(session) == []
    sites = postnorm_sites(session)
    # Per layer: Q, K, V, O, LN1, up, down, LN2.
    assert [s.kind for s in sites[:8]] == [CONSUMER] * 3 + [WRITER, NORM, CONSUMER, WRITER, NORM]
    assert len(sites) == 8 * LAYERS and all(s.sum for s in sites if s.kind == WRITER)


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_lstsq_brings_a_pruned_bert_closer_and_replays_identically(bert, granularity):
    from onnxdepth import api
    from onnxdepth.config import PruneConfig

    config = PruneConfig(0.3, granularity=granularity, importance="angular", calibration=bert.calibration,
                         compensate="lstsq")
    fitted = api.prune_model(bert.model, config)
    compensation = fitted.plan["compensation"]
    assert compensation["method"] == "lstsq" and compensation["layout"] == "post-norm"
    folded = [f for f in compensation["fits"] if f["folded"]]
    assert folded and all(f["held_out_error"]["after"] <= f["held_out_error"]["before"] for f in folded)  # rounded
    assert all("reason" in f for f in compensation["fits"] if not f["folded"])
    plain = api.replay_plan(bert.model, {"granularity": granularity, "steps": fitted.plan["steps"]})
    # No node and no weight added. (The tiny export shares one all-zeros bias and one all-ones norm scale among
    # its layers; a refitted bias or norm gets its own copy, counted apart, and the shared one is left as it was.)
    assert len(fitted.model.graph.node) <= len(plain.model.graph.node)  # (an Identity of a shared one may go)
    assert _matrix_elements(fitted.model) == _matrix_elements(plain.model)
    reference = _hidden(bert.model, bert.check)
    error = {name: float(np.mean((_hidden(r.model, bert.check) - reference) ** 2))
             for name, r in (("unfitted", plain), ("fitted", fitted))}
    assert error["fitted"] < error["unfitted"], error
    replayed = api.replay_plan(bert.model, fitted.plan)
    assert replayed.model.graph.SerializeToString() == fitted.model.graph.SerializeToString()


def test_a_fit_that_makes_the_held_out_error_worse_is_skipped_and_recorded(bert, monkeypatch):
    from onnxdepth import api
    from onnxdepth.config import PruneConfig

    # Every transform fit maps to zero: never better than the trained weights on held-out windows.
    monkeypatch.setattr(postnorm, "ridge_solve_toward", lambda gram, cross, prior, ridge: np.zeros_like(prior))
    config = PruneConfig(0.3, granularity="sublayer", importance="angular", calibration=bert.calibration,
                         compensate="lstsq")
    fits = api.prune_model(bert.model, config).plan["compensation"]["fits"]
    transforms = [f for f in fits if f["site"] != NORM and "held_out_error" in f]
    assert transforms and not any(f["folded"] for f in transforms)
    assert all(f["reason"] in ("the fit does not lower the held-out error", "its input is unchanged by pruning")
               for f in transforms)
    assert any(f["reason"] == "the fit does not lower the held-out error" for f in transforms)
