"""Transformer depth pruning on tiny random HF models exported with optimum (Llama with GQA, BERT).

One module-scoped export of each model keeps this file fast: a 3-layer LlamaForCausalLM (hidden 64,
4 heads, 2 kv heads, intermediate 128, vocab 128, tied embeddings) for text-generation and
text-generation-with-past, and a 2-layer BertModel for feature-extraction.
"""

from __future__ import annotations

import collections
import json
import types

import numpy as np
import onnx
import pytest
from onnx import helper

pytest.importorskip("optimum")
pytest.importorskip("optimum.exporters.onnx")
torch = pytest.importorskip("torch")

import onnxruntime as ort  # noqa: E402

from onnxdepth.config import PruneConfig  # noqa: E402
from onnxdepth.api import PLAN_METADATA_KEY, prune_model  # noqa: E402
from onnxdepth.errors import VerificationError  # noqa: E402
# Our own module: it must import (a broken one fails here), never skip.
from onnxdepth.eval import generate  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.params import count_params_proto  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402
from onnxdepth.select import algorithm8_order  # noqa: E402
from onnxdepth.verify import random_feeds, run_model, verify_model  # noqa: E402
from tiny_hf import decoder_feed, save_tiny_bert, save_tiny_llama  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 128, 64, 3, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
BERT_HIDDEN, BERT_LAYERS = 32, 2
PROMPT = [5, 17, 99, 3, 42, 64, 7, 120, 1, 88]  # 10 tokens
NEW_TOKENS = 8
LM_HEAD = "/lm_head/MatMul"

FINE_KINDS = ("attention", "mlp_gate", "mlp_up", "mlp_down")
UNIT_IDS = {
    "fine": [f"layer{i}.{k}" for i in range(LAYERS) for k in FINE_KINDS],
    "sublayer": [f"layer{i}.{k}" for i in range(LAYERS) for k in ("attention", "mlp")],
    "block": [f"layer{i}.block" for i in range(LAYERS)],
}
LAYER1_UNITS = {
    "fine": [f"layer1.{k}" for k in FINE_KINDS],
    "sublayer": ["layer1.attention", "layer1.mlp"],
    "block": ["layer1.block"],
}
# What the units of the BERT export are today (see test_bert_units / test_bert_mlp_down_is_a_unit).
BERT_UNIT_IDS = {
    "fine": [f"layer{i}.{k}" for i in range(BERT_LAYERS) for k in ("attention", "mlp_up", "mlp_down")],
    "sublayer": [f"layer{i}.{k}" for i in range(BERT_LAYERS) for k in ("attention", "mlp")],
    "block": [f"layer{i}.block" for i in range(BERT_LAYERS)],
}
BERT_OUTPUT_DENSE = [f"/encoder/layer.{i}/output/dense/MatMul" for i in range(BERT_LAYERS)]


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> types.SimpleNamespace:
    """The saved HF models and their ONNX exports (each exported once for the whole module).

    initializer_range 0.2 keeps greedy decoding from collapsing onto one token; RMSNorm weights are
    drawn around 1 so that every norm is its own initializer (all-ones ones would be shared).
    """
    root = tmp_path_factory.mktemp("hf")
    llama_dir = save_tiny_llama(root / "llama", seed=0, vocab=VOCAB, hidden=HIDDEN, layers=LAYERS, heads=HEADS,
                                kv_heads=KV_HEADS, inter=INTER, tie_word_embeddings=True, initializer_range=0.2,
                                norm_noise=0.1)
    bert_dir = save_tiny_bert(root / "bert", seed=0, hidden=BERT_HIDDEN, layers=BERT_LAYERS)
    paths = {
        "tg": export_hf(llama_dir, root / "tg", task="text-generation"),
        "tgp": export_hf(llama_dir, root / "tgp", task="text-generation-with-past"),
        "bert": export_hf(bert_dir, root / "fe", task="feature-extraction"),
    }
    return types.SimpleNamespace(llama_dir=llama_dir, bert_dir=bert_dir,
                                 **{k: onnx.load(str(p)) for k, p in paths.items()})


@pytest.fixture(scope="module")
def torch_llama(hf):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(hf.llama_dir), dtype=torch.float32).eval()


def _model(hf, task: str) -> onnx.ModelProto:
    return getattr(hf, task)


def _prune(model: onnx.ModelProto, unit_ids, granularity: str = "fine") -> tuple[onnx.ModelProto, PruneSession]:
    session = PruneSession(model, granularity=granularity)
    for unit_id in unit_ids:
        plan = session.plan(unit_id)
        assert plan.reason is None, (unit_id, plan.reason)
        session.apply(plan)
    return session.to_model(model), session


def _empty_past(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32)
            for i in model.graph.input if i.name.startswith("past_key_values.")}


def _logits(model: onnx.ModelProto, ids=PROMPT) -> np.ndarray:
    feed = {**decoder_feed(np.array(ids)), **_empty_past(model)}
    names = [o.name for o in model.graph.output]
    return dict(zip(names, run_model(model, feed)))["logits"]


def _torch_logits(model, ids=PROMPT) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits.numpy()


def _greedy_with_cache(model: onnx.ModelProto, prompt=PROMPT, new_tokens: int = NEW_TOKENS) -> list[int]:
    """Greedy decoding with the KV cache handled here: empty past first, then present.* fed back."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    past = {i.name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    ids, seen, tokens = np.array([prompt], np.int64), 0, []
    for _ in range(new_tokens):
        result = dict(zip(out_names, session.run(None, {**decoder_feed(ids, past=seen), **past})))
        token = int(result["logits"][0, -1].argmax())
        tokens.append(token)
        for name in past:
            present = result["present." + name.removeprefix("past_key_values.")]
            assert present.shape == (1, KV_HEADS, seen + ids.shape[1], HEAD_DIM)
            past[name] = present
        seen += ids.shape[1]
        ids = np.array([[token]], np.int64)
    return tokens


def _torch_greedy(model, prompt=PROMPT, new_tokens: int = NEW_TOKENS) -> list[int]:
    """Greedy decoding in PyTorch without a cache (the whole sequence each step)."""
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(_torch_logits(model, ids)[0, -1].argmax()))
    return ids[len(prompt):]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.name == name), None)


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def _through_casts(model: onnx.ModelProto, tensor: str) -> str:
    """TENSOR's source behind float->float Casts and Identities (optimum's RMSNorm casts its input)."""
    while (prod := _producer(model, tensor)) is not None and prod.op_type in ("Cast", "Identity"):
        if prod.op_type == "Cast":
            assert helper.get_attribute_value(prod.attribute[0]) == onnx.TensorProto.FLOAT
        tensor = prod.input[0]
    return tensor


def _io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


_ORIGINAL_SHAPES: dict = {}


def _output_shapes(model: onnx.ModelProto, input_shapes: dict) -> dict[str, tuple]:
    key = (id(model), tuple(sorted(input_shapes.items())))
    if key not in _ORIGINAL_SHAPES:
        outputs = run_model(model, random_feeds(model, input_shapes))
        _ORIGINAL_SHAPES[key] = (model, {n: o.shape for n, o in zip(_io(model)[1], outputs)})
    return _ORIGINAL_SHAPES[key][1]


def _check_pruned(pruned: onnx.ModelProto, original: onnx.ModelProto, session: PruneSession) -> None:
    """Full checker + ORT run (verify_model), every output's shape unchanged, fewer parameters."""
    onnx.checker.check_model(pruned, full_check=True)
    outputs = verify_model(pruned, original, session.input_shapes, removed=set(session.removed_graph_io))
    after = dict(zip(_io(pruned)[1], outputs))
    before = _output_shapes(original, session.input_shapes)
    assert set(after) == set(before) - set(session.removed_graph_io)
    for name, value in after.items():
        assert value.shape == before[name], name
    assert count_params_proto(pruned) < count_params_proto(original)
    assert session.params() < session.params_before


# -- 1. units ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["tg", "tgp"])
def test_llama_units(hf, task):
    model = _model(hf, task)
    fine = PruneSession(model, granularity="fine")
    assert len(fine.layers) == LAYERS
    units = fine.units()
    layer_units = [u for u in units if u.id.startswith("layer")]
    assert [u.id for u in layer_units] == UNIT_IDS["fine"]
    kinds = collections.Counter(u.kind for u in layer_units)
    assert kinds == {"attention": 3, "mlp_gate": 3, "mlp_up": 3, "mlp_down": 3}
    assert all(u.prunable and u.excluded_reason is None for u in layer_units)
    (head,) = [u for u in units if not u.id.startswith("layer")]
    assert (head.id, head.prunable, head.excluded_reason) == (LM_HEAD, False, "graph head")
    for granularity, kind_counts in (("sublayer", {"attention": 3, "mlp": 3}), ("block", {"block": 3})):
        units = PruneSession(model, granularity=granularity).units()
        layer_units = [u for u in units if u.id.startswith("layer")]
        assert [u.id for u in layer_units] == UNIT_IDS[granularity]
        assert collections.Counter(u.kind for u in layer_units) == kind_counts
        assert all(u.prunable for u in layer_units)
        assert [(u.id, u.excluded_reason) for u in units if not u.prunable] == [(LM_HEAD, "graph head")]


def test_llama_layers_by_structure(hf):
    """Each layer's units are the right projections (optimum names them after the HF modules)."""
    session = PruneSession(hf.tg)
    assert len(session.layers) == LAYERS
    for i, layer in enumerate(session.layers):
        assert layer.index == i
        attn = layer.attention
        assert [n.name for n in attn.projections] == [
            f"/model/layers.{i}/self_attn/{p}_proj/MatMul" for p in "qkvo"]
        assert {k: n.name for k, n in layer.mlp.items()} == {
            k: f"/model/layers.{i}/mlp/{p}_proj/MatMul" for k, p in
            (("mlp_gate", "gate"), ("mlp_up", "up"), ("mlp_down", "down"))}


def test_bert_units(hf):
    """A 2-layer BERT: attention + intermediate (mlp_up) + output dense (mlp_down) per layer. The output
    dense writes into the residual stream, so it is not a graph head even though only Adds and
    LayerNorms follow it up to last_hidden_state; nothing is excluded."""
    for granularity in ("fine", "sublayer", "block"):
        session = PruneSession(hf.bert, granularity=granularity)
        assert len(session.layers) == BERT_LAYERS
        units = session.units()
        layer_units = [u for u in units if u.id.startswith("layer")]
        assert [u.id for u in layer_units] == BERT_UNIT_IDS[granularity]
        assert all(u.prunable for u in layer_units)
        assert [u.id for u in units if not u.prunable] == []
    fine = PruneSession(hf.bert).units()
    assert collections.Counter(u.kind for u in fine) == {"attention": 2, "mlp_up": 2, "mlp_down": 2}


# -- 2. every unit, one at a time ----------------------------------------------------------------------
@pytest.mark.parametrize("task", ["tg", "tgp"])
@pytest.mark.parametrize("granularity,unit_id", [(g, u) for g, ids in UNIT_IDS.items() for u in ids])
def test_prune_each_llama_unit(hf, task, granularity, unit_id):
    model = _model(hf, task)
    pruned, session = _prune(model, [unit_id], granularity)
    _check_pruned(pruned, model, session)
    assert session.pruned[-1] == unit_id  # after a composite's members
    if task == "tgp" and unit_id.endswith((".attention", ".block")):
        assert session.removed_graph_io  # the KV cache entries of the pruned attention
    else:
        assert session.removed_graph_io == []
        assert _io(pruned) == _io(model)


@pytest.mark.parametrize("granularity", ["fine", "sublayer", "block"])
def test_plan_params_match_removal(hf, granularity):
    """The params a unit reports (and its plan's params_removed) are what pruning it removes."""
    mismatches, checked = [], []
    for unit in PruneSession(hf.tg, granularity=granularity).units():
        if not unit.prunable:
            continue
        checked.append(unit.id)
        pruned, session = _prune(hf.tg, [unit.id], granularity)
        actual = session.params_before - session.params()
        if unit.params != actual:
            mismatches.append((unit.id, unit.params, actual))
    assert checked == UNIT_IDS[granularity]  # every layer unit was checked (the head is not prunable)
    assert mismatches == []


# -- 3. deleting a layer -------------------------------------------------------------------------------
def test_layer_deletion_matches_pytorch(hf, torch_llama):
    full = _torch_logits(torch_llama)
    np.testing.assert_allclose(_logits(hf.tg), full, atol=1e-4, rtol=1e-4)
    import copy

    deleted = copy.deepcopy(torch_llama)
    del deleted.model.layers[1]
    for i, layer in enumerate(deleted.model.layers):
        layer.self_attn.layer_idx = i
    deleted.config.num_hidden_layers = LAYERS - 1
    expected = _torch_logits(deleted)
    assert not np.allclose(expected, full, atol=1e-2)  # the layer matters
    outputs = {}
    for task in ("tg", "tgp"):
        for granularity, unit_ids in LAYER1_UNITS.items():
            pruned, session = _prune(_model(hf, task), unit_ids, granularity)
            assert set(unit_ids) <= set(session.pruned)
            logits = _logits(pruned)
            assert logits.shape == (1, len(PROMPT), VOCAB)
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4, err_msg=f"{task} {granularity}")
            outputs[task, granularity] = logits
    for task in ("tg", "tgp"):
        np.testing.assert_array_equal(outputs[task, "sublayer"], outputs[task, "fine"])
        np.testing.assert_array_equal(outputs[task, "block"], outputs[task, "fine"])


def test_fine_units_in_any_order_delete_the_layer(hf):
    reference = _logits(_prune(hf.tg, ["layer1.block"], "block")[0])
    order = ["layer1.mlp_down", "layer1.mlp_up", "layer1.attention", "layer1.mlp_gate"]
    np.testing.assert_allclose(_logits(_prune(hf.tg, order)[0]), reference, atol=1e-5, rtol=1e-5)


def test_whole_layer_pruned_leaves_no_layer_nodes(hf):
    pruned, _ = _prune(hf.tg, ["layer1.block"], "block")
    left = [n for n in pruned.graph.node if n.name.startswith("/model/layers.1/")]
    # The residual Adds become x + x-via-identity and are patched away; only the norms' float->float
    # input Casts (outside the lifted norm) are left.
    assert {n.op_type for n in left} <= {"Cast"}
    assert all(helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT for n in left)
    assert not [n for n in pruned.graph.node if n.op_type == "Add" and n.name.startswith("/model/layers.1/")]


# -- 4. identity patching ------------------------------------------------------------------------------
def _mlp_names(model: onnx.ModelProto, layer: int = 1) -> dict:
    session = PruneSession(model)
    mlp = session.layers[layer].mlp
    gate, up, down = mlp["mlp_gate"], mlp["mlp_up"], mlp["mlp_down"]
    (product,) = [n for n in up.outputs[0].outputs if n.op == "Mul"]  # act(gate(x)) * up(x)
    (norm_out,) = {n.inputs[0].name for n in (gate, up)}
    attn_out = session.layers[layer].attention.output
    (residual,) = [n for n in attn_out.outputs if n.op == "Add"]  # h + attention(norm(h))
    (h,) = [t.name for t in residual.inputs if t is not attn_out]
    (mlp_residual,) = [n for n in down.outputs[0].outputs if n.op == "Add"]
    return {"gate": gate.name, "up": up.name, "down": down.name, "product": product.name, "norm_out": norm_out,
            "residual": residual.name, "residual_out": residual.outputs[0].name, "h": h,
            "mlp_residual": mlp_residual.name}


@pytest.mark.parametrize("order", [("mlp_gate", "mlp_up"), ("mlp_up", "mlp_gate")])
def test_gate_and_up_pruned_patch_the_product(hf, order):
    names = _mlp_names(hf.tg)
    before = _ops(hf.tg)
    pruned, _ = _prune(hf.tg, [f"layer1.{k}" for k in order])
    assert _node(pruned, names["product"]) is None
    assert _node(pruned, names["gate"]) is None and _node(pruned, names["up"]) is None
    # No Mul of two non-constant operands is left between the norm and down: the MLP is down(x).
    # With gate and up gone the post-attention norm only fed pruned transforms, so it went with them:
    # down reads the residual stream itself (behind the norm's float cast).
    assert _through_casts(pruned, _node(pruned, names["down"]).input[0]) == names["residual_out"]
    after = _ops(pruned)
    assert after["MatMul"] == before["MatMul"] - 2
    assert after["Sigmoid"] == before["Sigmoid"] - 1
    assert after["Mul"] < before["Mul"] - 2  # SiLU's Mul, the product, the norm's Muls


@pytest.mark.parametrize("unit", ["mlp_gate", "mlp_up"])
def test_one_branch_pruned_keeps_the_product(hf, unit):
    """x * up(x) or silu(gate(x)) * x: the product stays when only one branch is pruned."""
    names = _mlp_names(hf.tg)
    pruned, _ = _prune(hf.tg, [f"layer1.{unit}"])
    product = _node(pruned, names["product"])
    assert product is not None and product.op_type == "Mul"
    assert names["norm_out"] in product.input
    assert _node(pruned, names["down"]).input[0] == product.output[0]


def test_attention_pruned_patches_the_residual_add(hf):
    names = _mlp_names(hf.tg)
    before = _ops(hf.tg)
    pruned, _ = _prune(hf.tg, ["layer1.attention"])
    assert _node(pruned, names["residual"]) is None  # h + attention(h) -> h
    assert _ops(pruned)["Add"] < before["Add"]
    # The MLP's residual Add now adds to the previous layer's output directly.
    assert _through_casts(hf.tg, names["h"]) in {
        _through_casts(pruned, t) for t in _node(pruned, names["mlp_residual"]).input}
    assert _ops(pruned)["Softmax"] == before["Softmax"] - 1
    assert not [n.name for n in pruned.graph.node if n.name.startswith("/model/layers.1/self_attn/")]
    assert [n.op_type for n in pruned.graph.node if n.name.startswith("/model/layers.1/input_layernorm/")] == [
        "Cast"]  # the norm went with Q/K/V; its float->float input Cast stays


# -- 5. KV cache ---------------------------------------------------------------------------------------
def test_kv_cache_io_of_pruned_attention(hf):
    model = hf.tgp
    pruned, session = _prune(model, ["layer1.attention"])
    kv = {"past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value"}
    assert sorted(session.removed_graph_io) == sorted(kv)
    inputs, outputs = _io(model)
    assert _io(pruned) == ([n for n in inputs if n not in kv], [n for n in outputs if n not in kv])
    verify_model(pruned, model, session.input_shapes, removed=set(session.removed_graph_io))
    with pytest.raises(VerificationError, match="signature"):
        verify_model(pruned, model, session.input_shapes)


def test_kv_cache_io_of_pruned_first_attention(hf):
    pruned, session = _prune(hf.tgp, ["layer0.attention"])
    assert sorted(session.removed_graph_io) == sorted(
        ["past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value"])
    _greedy_with_cache(pruned)


def test_greedy_generate_after_first_attention_pruned(hf):
    pruned, _ = _prune(hf.tgp, ["layer0.attention"])
    assert len(generate.greedy_generate(pruned, np.array([PROMPT], np.int64), NEW_TOKENS)) == NEW_TOKENS


def test_greedy_generation_with_cache(hf, torch_llama):
    original = _greedy_with_cache(hf.tgp)
    assert len(set(original)) > 1  # not a degenerate model
    assert original == _torch_greedy(torch_llama)
    result = prune_model(hf.tgp, PruneConfig(0.0))
    assert result.pruned_units == [] and result.reduction == 0.0
    assert _greedy_with_cache(result.model) == original


def test_greedy_generation_with_pruned_attention(hf, torch_llama):
    pruned, session = _prune(hf.tgp, ["layer1.attention"])
    tokens = _greedy_with_cache(pruned)
    assert len(tokens) == NEW_TOKENS and all(0 <= t < VOCAB for t in tokens)
    # PyTorch with layer 1's attention removed (its sub-layer adds nothing to the residual stream).
    import copy

    reference = copy.deepcopy(torch_llama)

    class NoAttention(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return torch.zeros_like(hidden_states), None

    reference.model.layers[1].self_attn = NoAttention()
    np.testing.assert_allclose(_logits(pruned), _torch_logits(reference), atol=1e-4, rtol=1e-4)
    assert tokens == _torch_greedy(reference)


def test_greedy_generate_helper_agrees(hf):
    """onnxdepth.eval.generate.greedy_generate matches the loop written here."""
    for model in (hf.tgp, _prune(hf.tgp, ["layer1.attention"])[0]):
        tokens = generate.greedy_generate(model, np.array([PROMPT], np.int64), NEW_TOKENS)
        assert tokens.tolist() == _greedy_with_cache(model)
    assert generate.greedy_generate(hf.tg, np.array([PROMPT], np.int64), NEW_TOKENS).tolist() == \
        _greedy_with_cache(hf.tgp)


# -- 6. Algorithm 8 order ------------------------------------------------------------------------------
def _plans(attention: int, others: int) -> list:
    plans = [types.SimpleNamespace(unit_id=f"layer{i}.attention", score=float(10 + i)) for i in range(attention)]
    plans += [types.SimpleNamespace(unit_id=f"layer{i}.mlp_up", score=float(i)) for i in range(others)]
    return plans


def _pattern(order: list[str]) -> str:
    return "".join("A" if u.endswith(".attention") else "o" for u in order)


def test_algorithm8_interleave():
    plans = _plans(4, 8)
    order = algorithm8_order(plans)
    assert _pattern(order) == "oAooAooAooAo"
    assert all(_pattern(order)[k] == "A" for k in range(len(order)) if k % 3 == 1)
    assert [u for u in order if u.endswith(".attention")] == [f"layer{i}.attention" for i in range(4)]
    assert [u for u in order if not u.endswith(".attention")] == [f"layer{i}.mlp_up" for i in range(8)]
    assert sorted(order) == sorted(p.unit_id for p in plans)


def test_algorithm8_one_ranking_runs_out():
    assert _pattern(algorithm8_order(_plans(5, 2))) == "oAoAAAA"
    assert _pattern(algorithm8_order(_plans(1, 6))) == "oAooooo"
    assert _pattern(algorithm8_order(_plans(3, 0))) == "AAA"
    assert _pattern(algorithm8_order(_plans(0, 3))) == "ooo"
    assert algorithm8_order([]) == []


def test_algorithm8_orderings():
    plans = _plans(3, 6)
    asc = algorithm8_order(plans, "ascending")
    desc = algorithm8_order(plans, "descending")
    assert [u for u in desc if u.endswith(".attention")] == ["layer2.attention", "layer1.attention",
                                                              "layer0.attention"]
    assert [u for u in desc if not u.endswith(".attention")] == [f"layer{i}.mlp_up" for i in reversed(range(6))]
    assert _pattern(asc) == _pattern(desc) == "oAooAooAo"
    # Ties are broken by unit id, so the order does not depend on the input order.
    tied = [types.SimpleNamespace(unit_id=f"u{i}", score=1.0) for i in (3, 1, 2)]
    assert algorithm8_order(tied) == ["u1", "u2", "u3"]
    assert algorithm8_order(list(reversed(plans))) == asc
    random_orders = {tuple(algorithm8_order(plans, "random", seed)) for seed in range(8)}
    assert len(random_orders) > 1
    for seed in (0, 1, 7):
        order = algorithm8_order(plans, "random", seed)
        assert order == algorithm8_order(list(reversed(plans)), "random", seed)  # reproducible
        assert sorted(order) == sorted(p.unit_id for p in plans)
        assert _pattern(order) == "oAooAooAo"


# -- 7. prune_model to a ratio -------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["fine", "sublayer", "block"])
def test_prune_model_ratio(hf, granularity):
    result = prune_model(hf.tg, PruneConfig(0.3, granularity=granularity))
    assert result.reduction >= 0.3
    assert result.params_after == count_params_proto(result.model)
    assert result.params_before == count_params_proto(hf.tg)
    assert result.pruned_units and set(result.pruned_units) <= set(UNIT_IDS[granularity])
    assert len(set(result.pruned_units)) == len(result.pruned_units)
    verify_model(result.model, hf.tg, {"input_ids": (1, 10), "attention_mask": (1, 10), "position_ids": (1, 10)})
    plan = json.loads({p.key: p.value for p in result.model.metadata_props}[PLAN_METADATA_KEY])
    assert plan["granularity"] == granularity
    assert plan["pruned_units"] == result.pruned_units
    assert plan["removed_graph_io"] == []
    assert [s["unit"] for s in plan["steps"]] == result.pruned_units
    assert _logits(result.model).shape == (1, len(PROMPT), VOCAB)
    if granularity == "fine":
        pattern = _pattern(result.pruned_units)
        assert pattern == "oAooAooAooAo"[:len(pattern)]  # Algorithm 8's 2:1 interleave
        assert plan["method"] == "depth pruning (Algorithm 8)"


def test_prune_model_ratio_with_cache(hf):
    result = prune_model(hf.tgp, PruneConfig(0.3, granularity="block"))
    plan = json.loads({p.key: p.value for p in result.model.metadata_props}[PLAN_METADATA_KEY])
    removed = set(plan["removed_graph_io"])
    assert removed
    assert not removed & set(_io(result.model)[0] + _io(result.model)[1])
    layers = {u.removeprefix("layer").split(".")[0] for u in result.pruned_units}
    if "0" not in layers:  # see test_kv_cache_io_of_pruned_first_attention
        assert removed == {f"{p}.{i}.{kv}" for i in layers for p in ("past_key_values", "present")
                           for kv in ("key", "value")}
        assert len(_greedy_with_cache(result.model)) == NEW_TOKENS


def test_prune_model_random_ordering(hf):
    units = {}
    for seed in (1, 2):
        result = prune_model(hf.tg, PruneConfig(0.3, ordering="random", seed=seed))
        assert result.reduction >= 0.3
        assert set(result.pruned_units) <= set(UNIT_IDS["fine"])
        plan = json.loads({p.key: p.value for p in result.model.metadata_props}[PLAN_METADATA_KEY])
        assert plan["ordering"] == "random"
        assert _logits(result.model).shape == (1, len(PROMPT), VOCAB)
        units[seed] = result.pruned_units
    assert prune_model(hf.tg, PruneConfig(0.3, ordering="random", seed=1, verify=False)).pruned_units == units[1]


# -- 8. BERT -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity,unit_id", [(g, u) for g, ids in BERT_UNIT_IDS.items() for u in ids])
def test_prune_each_bert_unit(hf, granularity, unit_id):
    pruned, session = _prune(hf.bert, [unit_id], granularity)
    _check_pruned(pruned, hf.bert, session)
    assert session.removed_graph_io == [] and _io(pruned) == _io(hf.bert)
    feed = {"input_ids": np.array([PROMPT], np.int64), "attention_mask": np.ones((1, 10), np.int64),
            "token_type_ids": np.zeros((1, 10), np.int64)}
    names = [i.name for i in hf.bert.graph.input]
    (hidden,) = run_model(pruned, {k: feed[k] for k in names})
    assert hidden.shape == (1, 10, BERT_HIDDEN)
    assert np.isfinite(hidden).all()


def test_prune_bert_ratio(hf):
    result = prune_model(hf.bert, PruneConfig(0.3))
    assert result.reduction >= 0.3
    assert set(result.pruned_units) <= set(BERT_UNIT_IDS["fine"])


def test_last_cached_attention_is_kept(hf):
    """The exporter reads the past length off a layer's cache: pruning moves that read to another layer,
    and the last attention block with a cache is not prunable."""
    session = PruneSession(hf.tgp)
    attention = [u for u in session.structural_ids() if u.endswith(".attention")]
    for unit_id in attention[:-1]:
        session.apply(session.plan(unit_id))
    last = session.plan(attention[-1])
    assert last.reason is not None and "past length" in last.reason
    pruned = session.to_model(hf.tgp)
    _check_pruned(pruned, hf.tgp, session)
    assert len(_greedy_with_cache(pruned)) == NEW_TOKENS


@pytest.mark.parametrize("granularity", ["fine", "block"])
def test_plan_replay_transformer(hf, granularity):
    from onnxdepth.api import replay_plan

    result = prune_model(hf.tg, PruneConfig(0.3, granularity=granularity))
    replayed = replay_plan(hf.tg, result.plan)
    assert replayed.pruned_units == result.pruned_units
    assert [n.SerializeToString() for n in replayed.model.graph.node] == [
        n.SerializeToString() for n in result.model.graph.node]


def test_layer_deletion_matches_exported_deleted_model(hf, torch_llama, tmp_path):
    """All four fine units of layer 1 pruned == the ONNX export of the model with layer 1 deleted
    (allclose 1e-5: same runtime on both sides, so only float reassociation may differ)."""
    import copy

    deleted = copy.deepcopy(torch_llama)
    del deleted.model.layers[1]
    for i, layer in enumerate(deleted.model.layers):
        layer.self_attn.layer_idx = i
    deleted.config.num_hidden_layers = LAYERS - 1
    deleted.save_pretrained(tmp_path / "deleted")
    reference = onnx.load(str(export_hf(tmp_path / "deleted", tmp_path / "deleted_onnx", task="text-generation")))
    pruned, _ = _prune(hf.tg, LAYER1_UNITS["fine"], "fine")
    np.testing.assert_allclose(_logits(pruned), _logits(reference), atol=1e-5, rtol=1e-5)
