"""Cross-entropy importance (Sec. 4.3) and Taylor importance for causal LMs (Eq. 3.8-3.10).

Cross-entropy: the chained computation (pruned layer on its cached input, then the unpruned rest and the
head) equals the naive one (prune the unit in the whole model, run it all, CE against the unpruned
logits). Taylor: the ONNX graph's gradients, taken through onnx2torch, equal the gradients of the same
model in transformers/PyTorch, so a unit's Taylor score equals sum (dE/dW * W)^2 over its weights there.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

pytest.importorskip("optimum")
pytest.importorskip("optimum.exporters.onnx")
torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import onnxruntime as ort  # noqa: E402

from onnxdepth.api import prune_model, score_units  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.importance.taylor_calibration import attach_lm_taylor  # noqa: E402
from onnxdepth.errors import UnsupportedModelError  # noqa: E402
from onnxdepth.importance.angular import model_feeds  # noqa: E402
from onnxdepth.importance.cross_entropy import (CE_OUTPUT, REFERENCE_INPUT, cross_entropy,  # noqa: E402
                                                cross_entropy_scores, log_softmax, with_cross_entropy)
from onnxdepth.importance.taylor import TaylorLMScores  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402
from test_importance import LAYERS, N_SEQ, SEQ_LEN, UNIT_IDS, _calibration, tiny  # noqa: E402,F401

import graphs  # noqa: E402


def _logits(model: onnx.ModelProto, tokens: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = model_feeds({i.name: i for i in session.get_inputs()}, tokens)
    return session.run(["logits"], feeds)[0]


def test_log_softmax_and_cross_entropy_basics():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    probs = np.exp(log_softmax(logits))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    # CE(p, p) is the entropy of p; for the uniform row it is log 3.
    ce = cross_entropy(probs, logits)
    assert ce[1] == pytest.approx(np.log(3.0), rel=1e-6)
    assert ce[0] == pytest.approx(float(-(probs[0] * np.log(probs[0])).sum()), rel=1e-5)
    # Any other q gives a larger cross-entropy (Gibbs' inequality).
    assert (cross_entropy(probs, logits[::-1].copy()) > ce - 1e-6).all()


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("logits_type", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16])
def test_in_graph_cross_entropy_equals_numpy(opset, logits_type):
    # A "head" that is one MatMul, hidden [2, 3, 4] -> logits [2, 3, 5]; the CE nodes appended to it must
    # give the numpy CE per token, whatever the opset (axes attribute or input) and the logits' type.
    from onnx import helper

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["hidden", "w"], ["z32"])]
    nodes.append(helper.make_node("Cast", ["z32"], ["logits"], to=logits_type))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT,
                                                                            [2, 3, 4])],
                              [helper.make_tensor_value_info("logits", logits_type, [2, 3, 5])],
                              [onnx.numpy_helper.from_array(weight, "w")])
    head = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    extended = with_cross_entropy(head, "logits")
    onnx.checker.check_model(extended, full_check=True)
    hidden = rng.normal(size=(2, 3, 4)).astype(np.float32)
    logits = (hidden @ weight).astype(onnx.helper.tensor_dtype_to_np_dtype(logits_type)).astype(np.float32)
    reference = np.exp(log_softmax(rng.normal(size=(2, 3, 5)).astype(np.float32))).astype(np.float16)
    session = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    in_graph = session.run([CE_OUTPUT], {"hidden": hidden, REFERENCE_INPUT: reference})[0]
    assert in_graph.shape == (2, 3)
    np.testing.assert_allclose(in_graph, cross_entropy(reference, logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["fine", "sublayer", "block"])
def test_cross_entropy_scores_equal_whole_model(tiny, granularity):
    session = PruneSession(tiny.model, granularity=granularity)
    chained = cross_entropy_scores(tiny.model, session, tiny.tokens, batch_size=2, progress=False)
    assert sorted(chained) == sorted(UNIT_IDS[granularity])
    reference = np.exp(log_softmax(_logits(tiny.model, tiny.tokens)))
    entropy = float(cross_entropy(reference, _logits(tiny.model, tiny.tokens)).mean())
    for unit_id in UNIT_IDS[granularity]:
        full = PruneSession(tiny.model, granularity=granularity)
        full.apply(full.plan(unit_id))
        naive = float(cross_entropy(reference, _logits(full.to_model(tiny.model), tiny.tokens)).mean())
        assert chained[unit_id] == pytest.approx(naive, rel=1e-4), unit_id
        # Pruning anything can only move the distribution away from p: CE >= H(p).
        assert chained[unit_id] > entropy
    assert len(set(chained.values())) == len(chained)


def test_cross_entropy_through_score_units_and_prune(tiny):
    session = PruneSession(tiny.model)
    scores = score_units(tiny.model, session, "cross_entropy", _calibration(tiny))
    direct = cross_entropy_scores(tiny.model, PruneSession(tiny.model), tiny.tokens, progress=False)
    assert scores.units == pytest.approx(direct, rel=1e-6)
    result = prune_model(tiny.model, PruneConfig(0.2, importance="cross_entropy", calibration=_calibration(tiny)))
    assert result.reduction >= 0.2 and result.plan["importance"] == "cross_entropy"


def test_cross_entropy_needs_a_causal_lm_with_logits():
    with pytest.raises(UnsupportedModelError, match="transformer"):
        cross_entropy_scores(graphs.build_residual(), PruneSession(graphs.build_residual()), np.zeros((1, 4)))


def _hf_taylor(tiny, batch_size: int) -> dict[str, float]:
    """Unit Taylor scores of the transformers model itself: sum over each unit's weights of (dE/dW * W)^2."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(tiny.root / "llama")).eval()
    for start in range(0, len(tiny.tokens), batch_size):
        ids = torch.from_numpy(tiny.tokens[start:start + batch_size])
        model(input_ids=ids, labels=ids).loss.backward()

    def taylor(param) -> float:
        return float((param.grad.double() * param.detach().double()).pow(2).sum())

    scores = {}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        scores[f"layer{i}.attention"] = sum(taylor(p.weight) for p in (attn.q_proj, attn.k_proj, attn.v_proj,
                                                                        attn.o_proj))
        for kind, proj in (("mlp_gate", mlp.gate_proj), ("mlp_up", mlp.up_proj), ("mlp_down", mlp.down_proj)):
            scores[f"layer{i}.{kind}"] = taylor(proj.weight)
    return scores


def test_taylor_lm_scores_equal_pytorch_gradients(tiny):
    session = PruneSession(tiny.model)
    session.importance = TaylorLMScores(tiny.model, tiny.tokens, batch_size=2, progress=False)
    session._invalidate()
    expected = _hf_taylor(tiny, batch_size=2)
    plans = {p.unit_id: p for p in session.prunable_plans()}
    assert sorted(plans) == sorted(expected)
    for unit_id, value in expected.items():
        plan = plans[unit_id]
        # Attention (same width) scores exactly its Q/K/V/O weights; an MLP projection changes the width
        # (64 <-> 128) and also pays for the channels it forces out elsewhere, so it scores at least its own.
        if unit_id.endswith(".attention"):
            assert plan.score == pytest.approx(value, rel=1e-3), unit_id
        else:
            assert plan.score >= value * (1 - 1e-3), unit_id
    assert all(p.score > 0 for p in plans.values())


def test_prune_and_score_with_taylor_on_a_transformer(tiny, cli, tmp_path):
    result = prune_model(tiny.model, PruneConfig(0.2, importance="taylor", calibration=_calibration(tiny)))
    assert result.reduction >= 0.2 and result.plan["importance"] == "taylor"
    session = PruneSession(tiny.model)
    attach_lm_taylor(tiny.model, session, _calibration(tiny))
    lowest = min(session.prunable_plans(), key=lambda p: (p.score, p.unit_id))
    out = tmp_path / "scores.csv"
    code, _, err = cli("score", tiny.path, "--importance", "taylor", "--calib", tiny.npz, "--calib-sequences",
                       N_SEQ, "--calib-length", SEQ_LEN, "-o", out)
    assert code == 0, err
    rows = out.read_text().splitlines()
    assert rows[0] == "unit,score" and rows[1].split(",")[0] == lowest.unit_id
    code, stdout, err = cli("prune", tiny.path, tmp_path / "t.onnx", "--ratio", "0.2", "--importance", "taylor",
                            "--calib", tiny.npz, "--calib-sequences", N_SEQ, "--calib-length", SEQ_LEN, "--json")
    assert code == 0, err
    assert json.loads(stdout)["pruned_units"] == result.pruned_units


# -- image calibration ---------------------------------------------------------------------------------
def test_calibration_images_from_a_folder_npz_and_default(tmp_path, caplog):
    from PIL import Image

    from onnxdepth.calibration import calibration_images
    from onnxdepth.errors import InvalidArgumentError

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 32), (20, 40), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = calibration_images(str(tmp_path), 32, count=2)
    # Sorted file names, the first COUNT, letterboxed to [3, 32, 32] in [0, 1].
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # A 64x32 image letterboxed to 32: scale 0.5 -> 32x16 content centred between gray (114/255) bands.
    np.testing.assert_allclose(images[0, :, :8, :], 114 / 255, atol=1e-6)
    assert not np.allclose(images[0, :, 8:24, :], 114 / 255)
    np.savez(tmp_path / "calib.npz", images=images)
    np.testing.assert_array_equal(calibration_images(str(tmp_path / "calib.npz"), 32), images)
    with caplog.at_level("WARNING"):
        default = calibration_images(None, 32, count=3)
    assert default.shape == (3, 3, 32, 32) and "real images" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, message in [(empty, "no images"), (tmp_path / "calib.npz", "expected"), (tmp_path / "x.csv", "no such")]:
        size = 16 if bad.suffix == ".npz" else 32
        with pytest.raises(InvalidArgumentError, match=message):
            calibration_images(str(bad), size)


def test_taylor_on_a_detector_uses_the_calibration_folder(tmp_path, monkeypatch):
    """The CNN Taylor sidecar receives the --calib images (not the packaged photos)."""
    from onnxdepth.importance import taylor, taylor_calibration

    seen = {}

    class Recorder:
        def __init__(self, reference, images, **kwargs):
            seen["images"] = images

        def refresh(self, model):
            pass

    monkeypatch.setattr(taylor, "TaylorSidecar", Recorder)
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    model = graphs.build_residual()
    session = PruneSession(model)
    shape = next(iter(session.input_shapes.values()))  # [1, 3, 16, 16]
    taylor_calibration.taylor_refresh(model, session, Calibration(str(tmp_path)))(session)
    assert seen["images"].shape == (1, 3, shape[2], shape[2])
    assert seen["images"][0, 0].max() == pytest.approx(1.0)


def test_cross_entropy_rescoring(tiny):
    """--rescore-every with cross-entropy: one long round is the one-shot method; short rounds reach the ratio."""
    config = PruneConfig(0.3, granularity="fine", importance="cross_entropy", calibration=_calibration(tiny))
    one_shot = prune_model(tiny.model, config)
    one_round = prune_model(tiny.model, replace(config, rescore_every=100))
    assert one_round.pruned_units == one_shot.pruned_units
    greedy = prune_model(tiny.model, replace(config, rescore_every=1))
    assert greedy.reduction >= 0.3 and greedy.pruned_units[0] == one_shot.pruned_units[0]
    assert greedy.plan["rescore_every"] == 1 and greedy.plan["importance"] == "cross_entropy"
