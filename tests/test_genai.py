"""ONNX Runtime GenAI builder graphs (GroupQueryAttention, SkipSimplifiedLayerNormalization, genai_config.json).

The same tiny Llama exported by optimum and laid out as the GenAI builder does (tests/tiny_genai.py): the
units must be the same, the same units pruned must give the same logits, and a pruned GenAI folder must
have its caches renumbered and a config that matches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum")

from onnxdepth import api  # noqa: E402
from onnxdepth.graph.contrib import checker_view, unfuse_skip_norms  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.runtime import open_session  # noqa: E402

UNITS = ["layer1.attention", "layer0.mlp_gate", "layer2.mlp_down"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(GenAI-layout model path, optimum export path) of one tiny Llama, a tokenizer beside each."""
    from tiny_genai import build_genai_llama
    from tiny_hf import save_tiny_llama
    from tiny_lm import _tokenizer

    from onnxdepth.export.hf import export_hf

    root = tmp_path_factory.mktemp("genai")
    hf = save_tiny_llama(root / "llama", seed=0, vocab=128, hidden=64, layers=3, heads=4, kv_heads=2, inter=128,
                         tie_word_embeddings=True, initializer_range=0.2, norm_noise=0.1)
    genai = build_genai_llama(hf, root / "genai")
    optimum = export_hf(hf, root / "optimum", task="text-generation")
    for path in (genai, optimum):
        _tokenizer().save_pretrained(str(path.parent))
    return genai, optimum


def _logits(path_or_model, ids: np.ndarray, past_names=None) -> np.ndarray:
    session = open_session(path_or_model)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for spec in session.get_inputs():
        if spec.name == "position_ids":
            feeds[spec.name] = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))
        elif spec.name.startswith("past_key_values"):
            feeds[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, spec.shape[3]), dtype=np.float32)
    return session.run(["logits"], feeds)[0]


def test_the_stand_in_computes_the_optimum_export(pair):
    genai, optimum = pair
    ids = np.random.default_rng(0).integers(0, 128, (2, 9))
    np.testing.assert_allclose(_logits(genai, ids), _logits(optimum, ids), atol=1e-4)


def test_units_are_the_optimum_exports(pair):
    genai, optimum = pair
    ours = {u.id: (u.kind, u.prunable) for u in api.list_units(load_model(genai))}
    theirs = {u.id: (u.kind, u.prunable) for u in api.list_units(load_model(optimum))}
    layer_units = {k: v for k, v in theirs.items() if k.startswith("layer")}
    assert {k: v for k, v in ours.items() if k.startswith("layer")} == layer_units
    assert sum(kind == "attention" and ok for kind, ok in layer_units.values()) == 3


def test_same_units_pruned_give_the_same_logits(pair):
    genai, optimum = pair
    plan = {"granularity": "fine", "steps": [{"unit": u} for u in UNITS]}
    ours = api.replay_plan(load_model(genai), plan)
    theirs = api.replay_plan(load_model(optimum), plan)
    ids = np.random.default_rng(1).integers(0, 128, (2, 7))
    np.testing.assert_allclose(_logits(ours.model, ids), _logits(theirs.model, ids), atol=1e-4)
    ops = [n.op_type for n in ours.model.graph.node]
    assert ops.count("GroupQueryAttention") == 2
    # Skip-norms whose Add and norm both survive are joined again, the builder's form.
    assert ops.count("SkipSimplifiedLayerNormalization") >= 3
    assert {"past_key_values.1.key", "present.1.value"} <= set(ours.plan["removed_graph_io"])


def test_ratio_zero_is_the_input(pair):
    genai, _ = pair
    model = load_model(genai)
    result = api.prune_model(model, api.PruneConfig(ratio=0.0, fidelity=False))
    ids = np.random.default_rng(2).integers(0, 128, (1, 5))
    assert np.array_equal(_logits(result.model, ids), _logits(model, ids))


def test_skip_norms_split_and_join_exactly(pair):
    genai, _ = pair
    model = onnx.load(str(genai))
    split, count = unfuse_skip_norms(model)
    assert count == 6 and not any(n.op_type == "SkipSimplifiedLayerNormalization" for n in split.graph.node)
    ids = np.random.default_rng(3).integers(0, 128, (2, 6))
    np.testing.assert_allclose(_logits(split, ids), _logits(model, ids), atol=1e-5)
    # onnx does not register SimplifiedLayerNormalization; the checker's view moves it to ORT's domain only.
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(checker_view(model), full_check=True)


def test_pruned_folder_renumbers_caches_and_generates(pair, tmp_path):
    genai, _ = pair
    out = tmp_path / "pruned" / "model.onnx"
    out.parent.mkdir()
    plan = {"granularity": "fine", "steps": [{"unit": "layer0.attention"}, {"unit": "layer1.mlp_up"}]}
    result = api.replay_file(genai, out, plan)
    config = json.loads((out.parent / "genai_config.json").read_text())
    assert config["model"]["decoder"]["num_hidden_layers"] == 2
    assert (out.parent / "tokenizer.json").is_file()
    written = onnx.load(str(out))
    pasts = sorted(v.name for v in written.graph.input if v.name.startswith("past_key_values."))
    presents = sorted(v.name for v in written.graph.output if v.name.startswith("present."))
    assert pasts == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                     "past_key_values.1.value"]
    assert presents == ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert result.plan["renamed_graph_io"] == {"past_key_values.0.key": "past_key_values.1.key",
                                               "past_key_values.1.key": "past_key_values.2.key",
                                               "past_key_values.0.value": "past_key_values.1.value",
                                               "past_key_values.1.value": "past_key_values.2.value",
                                               "present.0.key": "present.1.key", "present.1.key": "present.2.key",
                                               "present.0.value": "present.1.value",
                                               "present.1.value": "present.2.value"}
    # A cached step (the prompt, then one token on its cache) equals the uncached run of the whole sequence.
    ids = np.random.default_rng(4).integers(0, 128, (1, 6))
    session = open_session(out)
    names = [o.name for o in session.get_outputs()]
    feeds = {"input_ids": ids[:, :5], "attention_mask": np.ones((1, 5), dtype=np.int64)}
    feeds.update({s.name: np.zeros((1, 2, 0, 16), dtype=np.float32) for s in session.get_inputs()[2:]})
    first = dict(zip(names, session.run(None, feeds)))
    step = {"input_ids": ids[:, 5:], "attention_mask": np.ones((1, 6), dtype=np.int64)}
    step.update({s.name: first[s.name.replace("past_key_values", "present")] for s in session.get_inputs()[2:]})
    cached = session.run(["logits"], step)[0][0, -1]
    np.testing.assert_allclose(cached, _logits(out, ids)[0, -1], atol=1e-4)


@pytest.fixture(scope="module")
def int4(pair, tmp_path_factory):
    from tiny_genai import quantize_int4
    from tiny_lm import _tokenizer

    path = quantize_int4(pair[0], tmp_path_factory.mktemp("int4") / "int4")
    _tokenizer().save_pretrained(str(path.parent))
    return path


def _nbits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(("_Q4", "_scales"))}


def test_int4_units_are_the_float_models(pair, int4):
    ours = {u.id: (u.kind, u.prunable) for u in api.list_units(load_model(int4)) if u.id.startswith("layer")}
    theirs = {u.id: (u.kind, u.prunable) for u in api.list_units(load_model(pair[0])) if u.id.startswith("layer")}
    assert ours == theirs and len(ours) == 12


def test_int4_untouched_weights_keep_their_codes(int4):
    from onnxdepth.prune.session import PruneSession

    model = load_model(int4)
    session = PruneSession(model)
    out = session.to_model(session.model)
    assert [n.op_type for n in out.graph.node].count("MatMulNBits") == 16
    before, after = _nbits(model), _nbits(out)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_int4_pruned_is_the_dequantized_model_pruned(int4, caplog):
    """Pruning whole units and slicing N or whole K blocks re-uses the codes: the int4 result computes what the
    same units pruned from the dequantized float model compute; K cut inside a block is quantized afresh."""
    from onnxdepth.graph.nbits import dequantize_nbits

    model = load_model(int4)
    plan = {"granularity": "fine", "steps": [{"unit": "layer1.attention"}, {"unit": "layer2.mlp_down"}]}
    caplog.set_level("INFO", logger="onnxdepth.graph.nbits")
    ours = api.replay_plan(model, plan)
    assert "{'kept': 11, 'sliced': 2, 'requantized': 0}" in caplog.text
    ops = [n.op_type for n in ours.model.graph.node]
    assert "MatMulNBits" in ops and "MatMul" not in ops
    floats = api.replay_plan(dequantize_nbits(model)[0], plan)
    ids = np.random.default_rng(5).integers(0, 128, (2, 7))
    np.testing.assert_allclose(_logits(ours.model, ids), _logits(floats.model, ids), atol=2e-4)
    # layer0.mlp_up: its input channels stay; mlp_down's K (1536 -> 64 of the gate's) is cut inside blocks.
    caplog.clear()
    cut = api.replay_plan(model, {"granularity": "fine", "steps": [{"unit": "layer0.mlp_up"}]})
    assert "'requantized': 1}" in caplog.text
    assert "MatMul" not in [n.op_type for n in cut.model.graph.node]
    close = _logits(cut.model, ids)
    reference = _logits(api.replay_plan(dequantize_nbits(model)[0],
                                        {"granularity": "fine", "steps": [{"unit": "layer0.mlp_up"}]}).model, ids)
    assert np.abs(close - reference).max() < 0.1 * np.abs(reference).max()  # 4-bit rounding of one weight


def test_int4_folder_generates_with_renumbered_caches(int4, tmp_path):
    out = tmp_path / "model.onnx"
    api.replay_file(int4, out, {"granularity": "fine", "steps": [{"unit": "layer0.attention"}]})
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]["num_hidden_layers"] == 2
    assert "past_key_values.0.key" in {v.name for v in onnx.load(str(out)).graph.input}
    assert np.isfinite(_logits(out, np.array([[1, 2, 3]]))).all()


def test_int4_float_weights_live_in_a_scratch_file_not_in_memory(int4):
    """The dequantized weights are external data in a scratch folder (mapped, like a float model's), none of
    them inline in the proto; the folder goes at exit."""
    from onnxdepth.graph.external import external_tensors, folder_of
    from onnxdepth.graph.nbits import dequantize_nbits

    model, records = dequantize_nbits(load_model(int4))
    floats = [t for t in model.graph.initializer if t.name.endswith("/dequantized")]
    assert len(floats) == len(records) == 16
    assert all(t in external_tensors(model) and not t.raw_data for t in floats)
    scratch = folder_of(model)
    assert scratch is not None and (Path(scratch) / "dequantized.data").stat().st_size >= sum(
        int(np.prod(t.dims)) * 4 for t in floats)
    ids = np.random.default_rng(6).integers(0, 128, (1, 5))
    np.testing.assert_allclose(_logits(model, ids), _logits(load_model(int4), ids), atol=1e-4)
