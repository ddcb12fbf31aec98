"""Perplexity evaluator on a tiny hand-built ONNX "language model" (no tokenizer, no download)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxdepth.errors import InvalidArgumentError, ModelLoadError
from onnxdepth.eval import evaluate_perplexity, perplexity

V, H = 16, 8


def _tiny_lm(emb: np.ndarray, proj: np.ndarray, extra_inputs: bool = True, past: bool = False) -> onnx.ModelProto:
    """input_ids [B, S] -> Gather(emb [V, H]) -> MatMul(proj [H, V]) -> logits [B, S, V].

    ``extra_inputs`` declares (unused-by-the-math) attention_mask / position_ids, folded into the graph
    through a zero-valued term so the checker keeps them; ``past`` adds past_key_values.0.key/value
    inputs [batch, 2, past_sequence_length, 4] in the same way.
    """
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
             helper.make_node("MatMul", ["h", "proj"], ["raw_logits"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    inits = [numpy_helper.from_array(emb.astype(np.float32), "emb"),
             numpy_helper.from_array(proj.astype(np.float32), "proj"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    terms = []
    if extra_inputs:
        for name in ("attention_mask", "position_ids"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]))
            nodes += [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{name}_f", "zero"], [f"{name}_z"]),
                      helper.make_node("Unsqueeze", [f"{name}_z", "axis_m1"], [f"{name}_u"])]
            terms.append(f"{name}_u")
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axis_m1"))
    if past:
        for kind in ("key", "value"):
            name = f"past_key_values.0.{kind}"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                        ["batch", 2, "past_sequence_length", 4]))
            nodes.append(helper.make_node("ReduceSum", [name], [f"{name}_s"], keepdims=0))
            nodes.append(helper.make_node("Mul", [f"{name}_s", "zero"], [f"{name}_z"]))
            terms.append(f"{name}_z")
    cur = "raw_logits"
    for i, t in enumerate(terms):
        nodes.append(helper.make_node("Add", [cur, t], [f"acc{i}"]))
        cur = f"acc{i}"
    nodes.append(helper.make_node("Identity", [cur], ["logits"]))
    graph = helper.make_graph(nodes, "tiny_lm", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(emb, proj, tokens, ctx, stride=None):
    """Independent NLL: per window, log-softmax over the vocab (float64) and the HF-guide scoring rule."""
    logits_all = emb.astype(np.float32)[tokens] @ proj.astype(np.float32)  # [N, V]; position-independent
    n = len(tokens)
    nlls = []
    if stride is None:
        starts = range(0, n, ctx)
        scored = [(b, min(b + ctx, n), b + 1) for b in starts]
    else:
        scored, prev_end = [], 0
        for b in range(0, n, stride):
            e = min(b + ctx, n)
            scored.append((b, e, max(b + 1, prev_end)))
            prev_end = e
            if e == n:
                break
    for b, e, first in scored:
        for j in range(first, e):  # token j predicted from position j-1 of the same window
            row = logits_all[j - 1].astype(np.float64)
            logp = row - (row.max() + math.log(np.exp(row - row.max()).sum()))
            nlls.append(-logp[tokens[j]])
    return math.exp(float(np.mean(nlls))), len(nlls), float(np.sum(nlls))


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.normal(size=(V, H)).astype(np.float32), rng.normal(size=(H, V)).astype(np.float32)


@pytest.fixture
def tokens():
    return np.random.default_rng(1).integers(0, V, size=203).astype(np.int64)


@pytest.mark.parametrize("ctx,stride,batch_size", [(32, None, 1), (32, None, 4), (50, None, 3),
                                                   (32, 8, 1), (32, 8, 5), (40, 40, 2), (17, 5, 2)])
def test_matches_independent_nll(weights, tokens, ctx, stride, batch_size):
    emb, proj = weights
    ref_ppl, ref_n, ref_nll = _reference(emb, proj, tokens, ctx, stride)
    res = perplexity(_session(_tiny_lm(emb, proj)), tokens, ctx=ctx, stride=stride, batch_size=batch_size,
                     progress=False)
    assert res["task"] == "perplexity"
    assert res["tokens"] == ref_n
    # The reference's float32 logits come from numpy's matmul, the model's from ONNX Runtime's: their summation
    # orders differ by CPU (about 1e-8 relative here); a wrong scoring rule is off by far more than 1e-6.
    assert res["nll"] == pytest.approx(ref_nll, rel=1e-6)
    assert res["perplexity"] == pytest.approx(ref_ppl, rel=1e-6)
    assert res["seconds"] >= 0


def test_non_overlapping_counts(weights, tokens):
    emb, proj = weights
    res = perplexity(_session(_tiny_lm(emb, proj)), tokens[:128], ctx=32, progress=False)
    assert res["tokens"] == 4 * 31  # first token of each window is not scored
    res = perplexity(_session(_tiny_lm(emb, proj)), tokens[:128], ctx=32, stride=16, progress=False)
    assert res["tokens"] == 127  # sliding: every token but the very first, once


def test_uniform_logits_give_vocab_size(tokens, tmp_path):
    emb = np.zeros((V, H), np.float32)
    proj = np.random.default_rng(2).normal(size=(H, V)).astype(np.float32)
    path = tmp_path / "uniform.onnx"
    onnx.save(_tiny_lm(emb, proj), str(path))
    for stride in (None, 7):
        res = perplexity(str(path), tokens, ctx=24, stride=stride, threads=1, progress=False)
        assert abs(res["perplexity"] - V) < 1e-6


def test_feeds_only_declared_inputs_and_empty_past(weights, tokens):
    emb, proj = weights
    ref_ppl, _, _ = _reference(emb, proj, tokens, 32)
    for model in (_tiny_lm(emb, proj, extra_inputs=False), _tiny_lm(emb, proj, past=True)):
        res = perplexity(_session(model), tokens, ctx=32, batch_size=2, progress=False)
        assert res["perplexity"] == pytest.approx(ref_ppl, rel=1e-6)  # float32 matmuls, as above


def test_progress_runs(weights, tokens):
    emb, proj = weights
    res = perplexity(_session(_tiny_lm(emb, proj)), tokens, ctx=32, progress=True)
    assert res["tokens"] > 0


def test_argument_errors(weights, tokens, tmp_path):
    sess = _session(_tiny_lm(*weights))
    with pytest.raises(InvalidArgumentError):
        perplexity(sess, tokens, ctx=1, progress=False)
    with pytest.raises(InvalidArgumentError):
        perplexity(sess, tokens, ctx=16, stride=17, progress=False)
    with pytest.raises(InvalidArgumentError):
        perplexity(sess, tokens.astype(np.float32), progress=False)
    with pytest.raises(ModelLoadError):
        perplexity(str(tmp_path / "missing.onnx"), tokens, progress=False)
    model_path = tmp_path / "m.onnx"
    onnx.save(_tiny_lm(*weights), str(model_path))
    text = tmp_path / "t.txt"
    text.write_text("hello world\n")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        evaluate_perplexity(model_path, text)
    with pytest.raises(InvalidArgumentError, match="text file"):
        evaluate_perplexity(model_path, tmp_path / "missing.txt")
    with pytest.raises(ModelLoadError, match="model file"):
        evaluate_perplexity(tmp_path / "missing.onnx", text)
