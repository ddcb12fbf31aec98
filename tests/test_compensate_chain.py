"""--compensate lstsq on CNNs: chain refits of the surviving Convs after a unit is removed (tiny graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxdepth import api
from onnxdepth.compensate import chain, conv_fit, lstsq
from onnxdepth.compensate.im2col import conv_geometry, patches, sample_positions
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.prune.session import PruneSession
from onnxdepth.runtime import open_session

import graphs

SIZE = 12


def _conv(name, x, w, b, out, k, **attrs):
    pad = k // 2
    return helper.make_node("Conv", [x, w, b], [out], name=name, kernel_shape=[k, k], pads=[pad] * 4, **attrs)


def _chain_model(shared: bool = False) -> onnx.ModelProto:
    """a: Conv 3x3 3->8 + Relu; b: Conv 1x1 8->8 (no activation); c: Conv 1x1 8->4 -> y. SHARED: d, a Conv
    1x1 8->4 on a's output sharing c's weight initializer -> z."""
    rng = np.random.default_rng(0)
    inits = {"wa": rng.normal(size=(8, 3, 3, 3)) * 0.3, "ba": rng.normal(size=8) * 0.1,
             "wb": rng.normal(size=(8, 8, 1, 1)) * 0.4, "bb": rng.normal(size=8) * 0.1,
             "wc": rng.normal(size=(4, 8, 1, 1)) * 0.4, "bc": rng.normal(size=4) * 0.1, "bd": np.zeros(4)}
    nodes = [_conv("a", "x", "wa", "ba", "a_out", 3), helper.make_node("Relu", ["a_out"], ["a_act"], name="relu"),
             _conv("b", "a_act", "wb", "bb", "b_out", 1), _conv("c", "b_out", "wc", "bc", "y", 1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, SIZE, SIZE])]
    if shared:
        nodes.append(_conv("d", "a_act", "wc", "bd", "z", 1))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, SIZE, SIZE]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, 3, SIZE, SIZE])], outputs,
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=(1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(count)]


def _pruned(model: onnx.ModelProto, unit: str = "b") -> PruneSession:
    session = PruneSession(model, detect_head=False)
    session.apply(session.plan(unit))
    return session


def _outputs(model: onnx.ModelProto, images: list[np.ndarray]) -> list[list[np.ndarray]]:
    ort = open_session(model)
    return [ort.run(None, {"x": image}) for image in images]


# -- im2col -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,dilation,group", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 1, 4)])
def test_patches_times_the_kernel_are_the_conv_output(stride, dilation, group):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(8, 9, 11)).astype(np.float32)
    weight = rng.normal(size=(4, 8 // group, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[stride] * 2,
                            dilations=[dilation] * 2, pads=[1, 0, 2, 1], group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    expected = open_session(model).run(None, {"x": image[None]})[0][0]
    import onnx_graphsurgeon as gs

    geometry = conv_geometry(gs.import_onnx(model).nodes[0], weight.shape)
    assert geometry.out_size(9, 11) == expected.shape[1:]
    rows, cols = sample_positions(*expected.shape[1:], 7, np.random.default_rng(0))
    sample = conv_fit.Sample(rows, cols, expected[:, rows, cols].T, expected.shape[1:])
    features = conv_fit.conv_features(image, geometry, sample, bias=True)
    prediction = conv_fit._predict(features, conv_fit.conv_matrix(weight, bias, group))
    np.testing.assert_allclose(prediction, sample.target, rtol=1e-4, atol=1e-4)
    assert patches(image, geometry, rows, cols).shape == (7, 8, 3, 3)


# -- refits -------------------------------------------------------------------------------------------------
def test_a_conv_after_a_removed_1x1_conv_is_refitted_to_float_tolerance(monkeypatch):
    """b (1x1, no activation) removed: c o b is a 1x1 conv of a's output, so refitting c reproduces y."""
    monkeypatch.setattr(lstsq, "RIDGE", 1e-12)
    model = _chain_model()
    session = _pruned(model)
    assert [n.name for n in chain.refit_candidates(model, session)] == ["c"]
    before = session.to_model(model)
    records = chain.fit_consumer_chains(model, session, _images(6, 0), _images(3, 1))
    assert [r["node"] for r in records] == ["c"] and records[0]["folded"]
    assert records[0]["held_out_error"]["after"] < 1e-9 < records[0]["held_out_error"]["before"]
    test = _images(4, 2)
    pruned, unpruned = _outputs(session.to_model(model), test), _outputs(model, test)
    for p, u in zip(pruned, unpruned):
        np.testing.assert_allclose(p[0], u[0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(_outputs(before, test)[0][0], unpruned[0][0], atol=1e-2)  # it needed the refit


def test_the_default_ridge_still_lowers_the_error_a_lot():
    model = _chain_model()
    records = chain.fit_consumer_chains(model, _pruned(model), _images(6, 0), _images(3, 1))
    error = records[0]["held_out_error"]
    assert records[0]["folded"] and error["after"] < 1e-3 * error["before"]


def test_a_shared_initializer_is_not_corrupted():
    """c's weight is shared with d (whose input pruning leaves as it is): refitting c leaves d and the source
    model's initializer alone."""
    model = _chain_model(shared=True)
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wc")).copy()
    session = _pruned(model)
    assert [n.name for n in chain.refit_candidates(model, session)] == ["c"]  # d's input did not change
    records = chain.fit_consumer_chains(model, session, _images(6, 0), _images(3, 1))
    assert records[0]["folded"]
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in model.graph.initializer
                                                             if t.name == "wc")), original)
    d = session.node("d")
    np.testing.assert_array_equal(d.inputs[1].values, original)
    assert session.node("c").inputs[1] is not d.inputs[1]
    test = _images(3, 2)
    for p, u in zip(_outputs(session.to_model(model), test), _outputs(model, test)):
        np.testing.assert_allclose(p[1], u[1], rtol=1e-5, atol=1e-6)  # z = d(a): unchanged


def test_a_fit_that_is_worse_on_held_out_images_is_skipped(monkeypatch):
    """A solve giving every weight 100 is worse than the pruned conv: not folded, and the record says so."""
    monkeypatch.setattr(conv_fit.ConvFit, "solve", lambda self, ridge=None: np.full_like(self.cross, 100.0))
    model = _chain_model()
    session = _pruned(model)
    weight = session.node("c").inputs[1].values.copy()
    records = chain.fit_consumer_chains(model, session, _images(6, 0), _images(3, 1))
    assert records == [{"kind": "conv_chain", "node": "c", "folded": False, "rows": 6 * SIZE * SIZE,
                        "held_out_error": records[0]["held_out_error"],
                        "reason": "the fit does not lower the held-out error"}]
    assert records[0]["held_out_error"]["after"] > records[0]["held_out_error"]["before"]
    np.testing.assert_array_equal(session.node("c").inputs[1].values, weight)


def test_output_channels_cut_by_pruning_are_matched_to_the_unpruned_ones():
    """A conv whose output channels were cut is fitted against the unpruned output's kept channels."""
    model = graphs.build_cnn_channels()
    session = PruneSession(model)
    unit = next(p.unit_id for p in session.prunable_plans() if p.in_channels != p.out_channels)
    session.apply(session.plan(unit))
    for name, origin in session.output_channels.items():
        assert len(origin) == session.node(name).inputs[1].values.shape[0]
    records = chain.fit_consumer_chains(model, session, _images_for(model, 8, 0), _images_for(model, 3, 1))
    assert records and all("reason" not in r or r["reason"] == "the fit does not lower the held-out error"
                           for r in records)


def _images_for(model: onnx.ModelProto, count: int, seed: int) -> list[np.ndarray]:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=dims).astype(np.float32) for _ in range(count)]


# -- through the API -------------------------------------------------------------------------------------------
def test_prune_model_records_the_refits_and_replay_gives_the_same_weights(tmp_path):
    model = graphs.build_residual()
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    images = np.random.default_rng(0).uniform(0, 1, size=(12, *dims[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", images=images)
    config = PruneConfig(0.2, compensate="lstsq", calibration=Calibration(str(tmp_path / "calib.npz")))
    result = api.prune_model(model, config)
    compensation = result.plan["compensation"]
    assert compensation["method"] == "lstsq" and compensation["fits"]
    assert all(f["kind"] == "conv_chain" for f in compensation["fits"])
    replayed = api.replay_plan(model, result.plan)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    again = {t.name: numpy_helper.to_array(t) for t in replayed.model.graph.initializer}
    assert weights.keys() == again.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(value, again[name])
