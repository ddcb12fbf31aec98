"""Angular importance (Eq. 3.11, block-local), calibration data, Gromov's contiguous runs, `score` / `prune --scores`.

One module-scoped export of a tiny 3-layer LlamaForCausalLM (text-generation, the same model as
test_transformer.py) with a tiny word-level tokenizer saved beside model.onnx (vocab 30 < 128), so
that text calibration files can be read.

The central check: the block-local scores (each layer cut out of the graph, pruned alone, run on cached
layer inputs) equal the naive whole-model computation (prune the unit in the full model, run all of
it, compare the layer's output tensor with the unpruned model's).
"""

from __future__ import annotations

import json
import logging
import types
from dataclasses import replace

import numpy as np
import onnx
import pytest

pytest.importorskip("optimum")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import onnxruntime as ort  # noqa: E402

import graphs  # noqa: E402
from onnxdepth.api import prune_model, score_units  # noqa: E402
from onnxdepth.calibration import calibration_tokens, saved_calibration_tokens  # noqa: E402
from onnxdepth.cli import main  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.errors import InvalidArgumentError, UnsupportedModelError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.graph.extract import with_extra_outputs  # noqa: E402
from onnxdepth.importance.angular import (angular_distance, angular_scores, layer_boundaries,  # noqa: E402
                                          model_feeds)
from onnxdepth.prune.session import PruneSession  # noqa: E402
from onnxdepth.scores import ScoreTable  # noqa: E402
from onnxdepth.select import algorithm8_order, gromov_order  # noqa: E402
from tiny_hf import save_tiny_llama  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 128, 64, 3, 4, 2, 128
FINE_KINDS = ("attention", "mlp_gate", "mlp_up", "mlp_down")
UNIT_IDS = {
    "fine": [f"layer{i}.{k}" for i in range(LAYERS) for k in FINE_KINDS],
    "sublayer": [f"layer{i}.{k}" for i in range(LAYERS) for k in ("attention", "mlp")],
    "block": [f"layer{i}.block" for i in range(LAYERS)],
}
N_SEQ, SEQ_LEN = 4, 16

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "the sun is warm and the sky is blue today",
    "we read a book about a small cat in the park",
]
# ~ 250 words: more than N_SEQ * SEQ_LEN = 64 tokens.
TEXT = "\n".join(SENTENCES * 6) + "\n"


def _tokenizer():
    """A word-level PreTrainedTokenizerFast trained on SENTENCES (ids < 30, within the model's vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> types.SimpleNamespace:
    """The tiny Llama export (model.onnx + tokenizer), random calibration tokens saved as .npz."""
    root = tmp_path_factory.mktemp("angular")
    llama_dir = save_tiny_llama(root / "llama", seed=0, vocab=VOCAB, hidden=HIDDEN, layers=LAYERS, heads=HEADS,
                                kv_heads=KV_HEADS, inter=INTER, tie_word_embeddings=True, initializer_range=0.2,
                                norm_noise=0.1)
    path = export_hf(llama_dir, root / "tg", task="text-generation")
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(str(path.parent))
    assert len(tokenizer) < VOCAB
    tokens = np.random.default_rng(0).integers(0, VOCAB, (N_SEQ, SEQ_LEN)).astype(np.int64)
    npz = root / "calib.npz"
    np.savez(npz, input_ids=tokens)
    return types.SimpleNamespace(root=root, path=path, model=onnx.load(str(path)), tokenizer=tokenizer,
                                 tokens=tokens, npz=npz)


def _calibration(tiny) -> Calibration:
    """The tiny model's saved calibration windows."""
    return Calibration(str(tiny.npz), N_SEQ, SEQ_LEN, model_path=tiny.path)


@pytest.fixture(scope="module")
def fine_scores(tiny) -> dict[str, float]:
    return angular_scores(tiny.model, PruneSession(tiny.model), tiny.tokens, progress=False)


# -- the whole-model reference -------------------------------------------------------------------------
def _run_with(model: onnx.ModelProto, names: list[str], tokens: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(with_extra_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = model_feeds({i.name: i for i in session.get_inputs()}, tokens)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _consumer_slot(model: onnx.ModelProto, tensor: str) -> tuple[str, int]:
    """(name, input index) of a node reading TENSOR (the next layer's norm or the final norm)."""
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == tensor:
                return node.name, k
    raise AssertionError(f"nothing reads {tensor}")


def _same_tensor_in(pruned: onnx.ModelProto, original: onnx.ModelProto, tensor: str) -> str:
    """TENSOR's counterpart in PRUNED: the same name, or (when pruning bypassed the node that produced
    it, e.g. the last layer's residual Add) whatever now feeds the same slot of the same consumer node."""
    if any(tensor in n.output for n in pruned.graph.node):
        return tensor
    consumer, k = _consumer_slot(original, tensor)
    node = next(n for n in pruned.graph.node if n.name == consumer)
    return node.input[k]


def _whole_model_scores(model: onnx.ModelProto, granularity: str, tokens: np.ndarray) -> dict[str, float]:
    """Eq. 3.11 the naive way: prune each unit in the full model, run it all, compare its layer's output."""
    session = PruneSession(model, granularity=granularity)
    boundaries = layer_boundaries(session)
    reference = _run_with(model, [n for pair in boundaries for n in pair], tokens)
    scores = {}
    for unit_id in session.structural_ids():
        layer = int(unit_id.split(".")[0].removeprefix("layer"))
        end = boundaries[layer][1]
        full = PruneSession(model, granularity=granularity)
        plan = full.plan(unit_id)
        assert plan.reason is None, (unit_id, plan.reason)
        full.apply(plan)
        pruned = full.to_model(model)
        name = _same_tensor_in(pruned, model, end)
        out = _run_with(pruned, [name], tokens)[name]
        scores[unit_id] = float(angular_distance(reference[end], out).mean())
    return scores


# -- 1. block-local == whole model ---------------------------------------------------------------------
def test_layer_boundaries_are_norm_inputs(tiny):
    boundaries = layer_boundaries(PruneSession(tiny.model))
    assert len(boundaries) == LAYERS
    for (start, end), (next_start, _) in zip(boundaries, boundaries[1:]):
        assert end == next_start
    for i, (start, _) in enumerate(boundaries):
        assert f"layers.{i}/" in start, start
    # The last layer ends where the final norm starts (its residual Add), not at the logits.
    assert boundaries[-1][1] != "logits"


def test_fine_scores_equal_whole_model(tiny, fine_scores):
    assert list(fine_scores) == UNIT_IDS["fine"]
    whole = _whole_model_scores(tiny.model, "fine", tiny.tokens)
    assert set(whole) == set(fine_scores)
    for unit_id, value in whole.items():
        assert fine_scores[unit_id] == pytest.approx(value, abs=1e-6), unit_id


def test_sublayer_scores_equal_whole_model(tiny, fine_scores):
    session = PruneSession(tiny.model, granularity="sublayer")
    local = angular_scores(tiny.model, session, tiny.tokens, progress=False)
    assert list(local) == UNIT_IDS["sublayer"]
    whole = _whole_model_scores(tiny.model, "sublayer", tiny.tokens)
    assert set(whole) == set(local)
    for unit_id, value in whole.items():
        assert local[unit_id] == pytest.approx(value, abs=1e-6), unit_id
    # An attention unit is the same Prune(f) at both granularities.
    for i in range(LAYERS):
        assert local[f"layer{i}.attention"] == pytest.approx(fine_scores[f"layer{i}.attention"], abs=1e-12)


def test_block_scores_equal_whole_model_and_layer_io_distance(tiny):
    session = PruneSession(tiny.model, granularity="block")
    block = score_units(tiny.model, session, "angular", _calibration(tiny)).units
    assert list(block) == UNIT_IDS["block"]
    whole = _whole_model_scores(tiny.model, "block", tiny.tokens)
    boundaries = layer_boundaries(session)
    reference = _run_with(tiny.model, [n for pair in boundaries for n in pair], tiny.tokens)
    assert len(boundaries) == LAYERS
    for i, (start, end) in enumerate(boundaries):
        unit_id = f"layer{i}.block"
        assert block[unit_id] == pytest.approx(whole[unit_id], abs=1e-6), unit_id
        io = float(angular_distance(reference[start], reference[end]).mean())
        assert block[unit_id] == pytest.approx(io, abs=1e-6), unit_id
    # angular_scores at block granularity gives the same numbers.
    direct = angular_scores(tiny.model, session, tiny.tokens, progress=False)
    for unit_id in UNIT_IDS["block"]:
        assert direct[unit_id] == pytest.approx(block[unit_id], abs=1e-12)


def test_block_gromov_table_is_run_distances(tiny):
    """score_units(block).run_table(L)[l][n] = distance(input of layer l, output of layer l+n-1)."""
    session = PruneSession(tiny.model, granularity="block")
    scores = score_units(tiny.model, session, "angular", _calibration(tiny))
    table = scores.run_table(LAYERS)
    boundaries = layer_boundaries(session)
    points = [b[0] for b in boundaries] + [boundaries[-1][1]]
    reference = _run_with(tiny.model, points, tiny.tokens)
    assert [len(row) for row in table] == [LAYERS + 1 - l for l in range(LAYERS)]
    for l in range(LAYERS):
        assert table[l][0] == 0.0
        for n in range(1, LAYERS - l + 1):
            expected = float(angular_distance(reference[points[l]], reference[points[l + n]]).mean())
            assert table[l][n] == pytest.approx(expected, abs=1e-9), (l, n)
        assert table[l][1] == pytest.approx(scores.units[f"layer{l}.block"], abs=1e-12)


# -- 2. range and determinism --------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["fine", "sublayer", "block"])
def test_scores_in_unit_interval_and_deterministic(tiny, granularity):
    first = angular_scores(tiny.model, PruneSession(tiny.model, granularity=granularity), tiny.tokens,
                           progress=False)
    second = angular_scores(tiny.model, PruneSession(tiny.model, granularity=granularity), tiny.tokens,
                            progress=False)
    assert first == second
    assert list(first) == UNIT_IDS[granularity]
    for unit_id, value in first.items():
        assert 0.0 <= value <= 1.0, (unit_id, value)
        assert value > 0.0, unit_id  # every unit of a random model changes its layer's output


def test_batching_does_not_change_scores(tiny, fine_scores):
    other = angular_scores(tiny.model, PruneSession(tiny.model), tiny.tokens, batch_size=3, progress=False)
    assert list(other) == list(fine_scores) == UNIT_IDS["fine"]
    for unit_id, value in fine_scores.items():
        assert other[unit_id] == pytest.approx(value, abs=1e-6), unit_id


def test_angular_distance_basics():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = np.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    # Not exactly 0 / 1: the 1e-12 in the cosine's denominator (see the next test).
    assert np.allclose(angular_distance(a, b), [0.0, 0.5, 1.0, 0.0], atol=1e-6)
    assert angular_distance(a[None], b[None]).shape == (1, 4)


def test_angular_distance_of_a_vector_to_itself_is_zero():
    x = np.array([[6e-4, 8e-4], [0.6, 0.8]])
    assert np.all(angular_distance(x, x) < 1e-6), angular_distance(x, x)


def test_angular_scores_need_a_transformer():
    model = graphs.build_residual()
    with pytest.raises(UnsupportedModelError, match="transformer"):
        angular_scores(model, PruneSession(model), np.zeros((1, 4), np.int64), progress=False)


# -- 3. Gromov et al.: contiguous runs -----------------------------------------------------------------
def test_gromov_order_picks_the_closest_run():
    # table[l][n]: distance between the input of layer l and the output of layer l + n - 1.
    table = [[0.0, 0.50, 0.30, 0.60, 0.70],
             [0.0, 0.20, 0.25, 0.40],
             [0.0, 0.10, 0.25],
             [0.0, 0.05]]
    assert gromov_order(table, 1) == ["layer3.block"]
    # l=1 and l=2 tie at 0.25: the lower start wins.
    assert gromov_order(table, 2) == ["layer1.block", "layer2.block"]
    assert gromov_order(table, 3) == ["layer1.block", "layer2.block", "layer3.block"]
    assert gromov_order(table, 4) == [f"layer{i}.block" for i in range(4)]
    tied = [[0.0, 0.3], [0.0, 0.3], [0.0, 0.3]]
    assert gromov_order(tied, 1) == ["layer0.block"]


def _block_ratio_for_two_layers(model: onnx.ModelProto) -> float:
    """A ratio that one layer cannot reach but two can (so Gromov's run has length 2)."""
    session = PruneSession(model, granularity="block")
    per_layer = sorted(session.plan(f"layer{i}.block").params_removed for i in range(LAYERS))
    one, two = per_layer[-1] / session.params_before, sum(per_layer[:2]) / session.params_before
    assert one < two
    return (one + two) / 2


# Hand-made block scores: single layers rank layer2 < layer0 < layer1 (so a plain ranking takes the
# non-contiguous {0, 2}), while the run of two starting at layer 0 is the closest.
HAND_TABLE = [[0.0, 0.10, 0.20, 0.90], [0.0, 0.80, 0.70], [0.0, 0.05]]
HAND_UNITS = {"layer0.block": 0.10, "layer1.block": 0.80, "layer2.block": 0.05}
HAND_SCORES = ScoreTable.from_run_table(HAND_UNITS, HAND_TABLE)


def test_prune_model_block_angular_prunes_a_contiguous_run(tiny):
    ratio = _block_ratio_for_two_layers(tiny.model)
    gromov = prune_model(tiny.model, PruneConfig(ratio, granularity="block", importance="angular"), scores=HAND_SCORES)
    assert gromov.pruned_units == ["layer0.block", "layer1.block"]
    assert gromov.reduction >= ratio
    ranking = prune_model(tiny.model, PruneConfig(ratio, granularity="block", importance="angular",
                                                  block_choice="ranking"), scores=HAND_SCORES)
    assert ranking.pruned_units == ["layer2.block", "layer0.block"]


def test_prune_model_block_angular_on_calibration_data(tiny):
    ratio = _block_ratio_for_two_layers(tiny.model)
    result = prune_model(tiny.model, PruneConfig(ratio, granularity="block", importance="angular",
                                                 calibration=_calibration(tiny)))
    layers = sorted(int(u.split(".")[0].removeprefix("layer")) for u in result.pruned_units)
    assert len(layers) == 2 and layers[1] == layers[0] + 1, result.pruned_units
    scores = score_units(tiny.model, PruneSession(tiny.model, granularity="block"), "angular", _calibration(tiny))
    table = scores.run_table(LAYERS)
    assert result.pruned_units == gromov_order(table, 2)


def test_prune_model_block_gromov_with_plain_scores(tiny):
    """Single-layer scores do not say which runs of layers are close: Gromov refuses, ranking works."""
    from onnxdepth.errors import InvalidArgumentError

    scores = ScoreTable(dict(HAND_UNITS))
    ratio = _block_ratio_for_two_layers(tiny.model)
    with pytest.raises(InvalidArgumentError, match="block-choice ranking"):
        prune_model(tiny.model, PruneConfig(ratio, granularity="block", importance="angular"), scores=scores)
    result = prune_model(tiny.model, PruneConfig(ratio, granularity="block", importance="angular",
                                                 block_choice="ranking"), scores=scores)
    assert len(result.pruned_units) == 2


# -- 4. calibration data -------------------------------------------------------------------------------
def _text_ids(tiny, text: str) -> np.ndarray:
    return np.asarray(tiny.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def test_calibration_txt_windows_spread_over_the_file(tiny, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    tokens = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)
    ids = _text_ids(tiny, TEXT)
    assert len(ids) > N_SEQ * SEQ_LEN
    assert tokens.shape == (N_SEQ, SEQ_LEN) and tokens.dtype == np.int64
    # Evenly spaced windows: the first starts at token 0, the last ends at the last token.
    starts = np.linspace(0, len(ids) - SEQ_LEN, N_SEQ).astype(int)
    assert starts[-1] > (N_SEQ - 1) * SEQ_LEN  # spread: not the leading windows back to back
    assert np.all(np.diff(starts) >= SEQ_LEN)  # and none overlap
    for row, start in zip(tokens, starts):
        assert np.array_equal(row, ids[start:start + SEQ_LEN])
    assert np.array_equal(tokens[-1], ids[-SEQ_LEN:])
    assert tokens.max() < len(tiny.tokenizer) and tokens.min() >= 2  # no [UNK]/<s>: the text is in-vocab
    # The file's own word order: the first sequence starts with the first words of the text.
    assert tiny.tokenizer.decode(tokens[0, :4].tolist()) == "the cat sat on"


def test_calibration_txt_head_windows(tiny, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    tokens = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN, windows="head")
    assert np.array_equal(tokens.ravel(), _text_ids(tiny, TEXT)[:N_SEQ * SEQ_LEN])
    with pytest.raises(InvalidArgumentError, match="expected one of spread, head"):
        calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN, windows="tail")


def test_saved_calibration_tokens_written_once(tiny, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    out = tmp_path / "calib.npz"
    saved = saved_calibration_tokens(str(path), tiny.path, out, n_seq=N_SEQ, seq_len=SEQ_LEN, windows="head")
    head = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN, windows="head")
    assert np.array_equal(np.load(saved)["input_ids"], head)
    # A second call keeps the file it finds (a resumed run reads the tokens it started with).
    saved_calibration_tokens(str(path), tiny.path, out, n_seq=N_SEQ, seq_len=SEQ_LEN, windows="spread")
    assert np.array_equal(np.load(out)["input_ids"], head)
    assert np.array_equal(calibration_tokens(saved, tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN), head)


def test_calibration_txt_fewer_tokens_than_asked(tiny, tmp_path, caplog):
    path = tmp_path / "short.txt"
    path.write_text(SENTENCES[0] + " " + SENTENCES[1])  # 19 words
    with caplog.at_level(logging.WARNING):
        tokens = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=8)
    assert tokens.shape == (2, 8)
    assert "only 2 sequences" in caplog.text
    with pytest.raises(InvalidArgumentError, match="need at least"):
        calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=64)


def test_calibration_jsonl_text_field(tiny, tmp_path):
    path = tmp_path / "calib.jsonl"
    texts = [" ".join(SENTENCES * 2)] * 3
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n\n")
    tokens = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)
    ids = _text_ids(tiny, "\n\n".join(texts))
    assert tokens.shape == (N_SEQ, SEQ_LEN)
    assert np.array_equal(tokens[0], ids[:SEQ_LEN]) and np.array_equal(tokens[-1], ids[-SEQ_LEN:])


def test_calibration_npz_input_ids(tiny, tmp_path):
    ids = np.arange(6 * 20, dtype=np.int32).reshape(6, 20) % VOCAB
    path = tmp_path / "calib.npz"
    np.savez(path, input_ids=ids)
    tokens = calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)
    assert tokens.dtype == np.int64
    assert np.array_equal(tokens, ids[:N_SEQ, :SEQ_LEN])


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "no such file"),
    ("calib.csv", "a,b\n", "expected .txt, .jsonl or .npz"),
    ("bad.jsonl", '{"text": "the cat"}\nnot json\n', "line 2"),
    ("nofield.jsonl", '{"body": "the cat"}\n', "line 1"),
    ("notobject.jsonl", '["the cat"]\n', "line 1"),
    ("nokey.npz", "npz-without-input_ids", "input_ids"),
])
def test_calibration_errors_are_one_line(tiny, tmp_path, name, content, message):
    path = tmp_path / name
    if content == "npz-without-input_ids":
        np.savez(path, tokens=np.zeros((2, 4), np.int64))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgumentError) as info:
        calibration_tokens(str(path), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)
    text = str(info.value)
    assert "\n" not in text and message in text and str(path) in text


def test_calibration_default_samples_from_the_model(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="onnxdepth.calibration"):
        first = calibration_tokens(None, tiny.path, n_seq=3, seq_len=12, seed=0)
    assert any(r.levelno == logging.WARNING and "no --calib" in r.getMessage() for r in caplog.records)
    again = calibration_tokens(None, tiny.path, n_seq=3, seq_len=12, seed=0)
    other = calibration_tokens(None, tiny.path, n_seq=3, seq_len=12, seed=1)
    assert first.shape == (3, 12) and first.dtype == np.int64
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (first[:, 0] == tiny.tokenizer.bos_token_id).all()
    assert first.min() >= 0 and first.max() < VOCAB
    # The rows are distinct samples, not one sequence repeated.
    assert len({tuple(row) for row in first.tolist()}) == 3


def test_default_calibration_feeds_angular_scores(tiny):
    session = PruneSession(tiny.model)
    a = score_units(tiny.model, session, "angular", Calibration(model_path=tiny.path, sequences=2, length=8, seed=0))
    b = score_units(tiny.model, session, "angular", Calibration(model_path=tiny.path, sequences=2, length=8, seed=0))
    assert a == b and list(a.units) == UNIT_IDS["fine"]


# -- 5. CLI --------------------------------------------------------------------------------------------
def _read_csv(path) -> list[tuple[str, float]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "unit,score"
    rows = [line.split(",") for line in lines[1:]]
    assert all(len(r) == 2 for r in rows)
    return [(u, float(s)) for u, s in rows]


@pytest.fixture(scope="module")
def text_calib(tiny):
    path = tiny.root / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def score_csv(tiny, text_calib):
    path = tiny.root / "scores.csv"
    code = main(["score", str(tiny.path), "--importance", "angular", "--calib", str(text_calib),
                 "--calib-sequences", str(N_SEQ), "--calib-length", str(SEQ_LEN), "-o", str(path)])
    assert code == 0
    return path


def test_cli_score_writes_sorted_csv(tiny, text_calib, score_csv):
    rows = _read_csv(score_csv)
    assert sorted(u for u, _ in rows) == sorted(UNIT_IDS["fine"])
    values = [s for _, s in rows]
    assert values == sorted(values)
    tokens = calibration_tokens(str(text_calib), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)
    expected = angular_scores(tiny.model, PruneSession(tiny.model), tokens, progress=False)
    for unit_id, value in rows:
        assert value == pytest.approx(expected[unit_id], rel=1e-7, abs=1e-9), unit_id


def test_cli_score_stdout_and_block(cli, tiny, text_calib):
    code, out, err = cli("score", tiny.path, "--importance", "angular", "--calib", text_calib, "--calib-sequences",
                         N_SEQ, "--calib-length", SEQ_LEN, "--granularity", "block")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "unit,score"
    units = [line.split(",")[0] for line in lines[1:]]
    # One row per layer, plus one per contiguous run of layers (Gromov's distances), no internal keys.
    assert sorted(u for u in units if u.endswith(".block")) == UNIT_IDS["block"]
    n = len(UNIT_IDS["block"])
    runs = [u for u in units if u.startswith("layers")]
    assert len(runs) == n * (n + 1) // 2 and not any(u.startswith("__") for u in units)


def test_cli_prune_with_scores_follows_algorithm8(cli, tiny, score_csv, tmp_path):
    out = tmp_path / "pruned.onnx"
    code, stdout, err = cli("prune", tiny.path, out, "--ratio", "0.3", "--scores", score_csv, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    pruned = summary["pruned_units"]
    assert summary["reduction"] >= 0.3 and pruned
    scores = dict(_read_csv(score_csv))
    plans = [types.SimpleNamespace(unit_id=u, score=s) for u, s in scores.items()]
    order = algorithm8_order(plans)
    # Walk Algorithm 8's order as prune_one_shot does: skip units that became unprunable, stop at the ratio.
    session = PruneSession(tiny.model)
    expected = []
    for unit_id in order:
        if 1.0 - session.params() / session.params_before >= 0.3:
            break
        plan = session.plan(unit_id)
        if plan.reason is None:
            session.apply(plan)
            expected.append(unit_id)
    assert pruned == expected
    # The lowest-scoring non-attention unit goes first; attention units are taken lowest first too.
    assert pruned[0] == min((u for u in scores if not u.endswith(".attention")), key=scores.get)
    attention = [u for u in pruned if u.endswith(".attention")]
    all_attention = sorted((u for u in scores if u.endswith(".attention")), key=scores.get)
    assert attention == all_attention[:len(attention)]
    assert out.exists()


@pytest.mark.parametrize("content, message", [
    ("unit,score\nlayer0.attention,0.5\n", "no score for"),  # the other 11 units are missing
    ("name,value\nlayer0.attention,0.5\n", "expected CSV columns unit,score"),
    ("unit,score\nlayer0.attention,abc\n", "expected CSV columns unit,score"),
    ("unit,score\nlayer0.attention\n", "expected CSV columns unit,score"),
    ("unit,score\n", "empty score table"),
])
def test_cli_prune_bad_scores(cli, tiny, tmp_path, content, message):
    scores = tmp_path / "scores.csv"
    scores.write_text(content)
    out = tmp_path / "out.onnx"
    code, stdout, err = cli("prune", tiny.path, out, "--ratio", "0.3", "--scores", scores, "--json")
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("onnxdepth: error:") and message in err, err
    assert not out.exists()


def test_cli_prune_missing_scores_file(cli, tiny, tmp_path):
    code, _, err = cli("prune", tiny.path, tmp_path / "out.onnx", "--ratio", "0.3", "--scores",
                       tmp_path / "nope.csv")
    assert code == 1 and err.count("\n") == 1 and "no such file" in err


@pytest.mark.parametrize("command", ["prune", "score"])
def test_cli_cross_entropy_on_a_cnn(cli, save_model, tmp_path, command):
    path = save_model(graphs.build_residual(), "cnn.onnx")
    argv = ["prune", path, tmp_path / "out.onnx", "--ratio", "0.3"] if command == "prune" else ["score", path]
    code, _, err = cli(*argv, "--importance", "cross_entropy")
    assert code == 1 and err.count("\n") == 1 and "transformer" in err, err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("command", ["prune", "score"])
def test_cli_angular_on_a_model_without_layers_or_image_input(cli, save_model, tmp_path, command):
    path = save_model(graphs.build_mlp(), "mlp.onnx")
    argv = ["prune", path, tmp_path / "out.onnx", "--ratio", "0.3"] if command == "prune" else ["score", path]
    code, _, err = cli(*argv, "--importance", "angular")
    assert code == 1 and err.count("\n") == 1 and "transformer" in err, err
    assert "internal error" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_cli_angular_on_a_cnn_scores_on_the_graph_outputs(cli, save_model, tmp_path):
    path = save_model(graphs.build_residual(), "cnn.onnx")
    code, out, err = cli("score", path, "--importance", "angular", "-o", tmp_path / "scores.csv")
    assert code == 0, err
    table = (tmp_path / "scores.csv").read_text().splitlines()
    assert table[0] == "unit,score" and len(table) > 3
    values = [float(line.split(",")[1]) for line in table[1:]]
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    code, _, err = cli("prune", path, tmp_path / "out.onnx", "--ratio", "0.2", "--scores", tmp_path / "scores.csv")
    assert code == 0, err
    assert (tmp_path / "out.onnx").exists()


def test_cli_calib_errors_are_one_line(cli, tiny, tmp_path):
    bad = tmp_path / "calib.csv"
    bad.write_text("x")
    code, _, err = cli("score", tiny.path, "--importance", "angular", "--calib", bad)
    assert code == 1 and err.count("\n") == 1 and "expected .txt, .jsonl or .npz" in err


def test_cli_prune_block_gromov_with_score_csv(cli, tiny, text_calib, tmp_path):
    scores = tmp_path / "block.csv"
    code, _, err = cli("score", tiny.path, "--importance", "angular", "--calib", text_calib, "--calib-sequences",
                       N_SEQ, "--calib-length", SEQ_LEN, "--granularity", "block", "-o", scores)
    assert code == 0, err
    # The CSV also carries the distances of runs of layers, which Gromov's choice needs.
    assert any(row.startswith("layers0-1,") for row in scores.read_text().splitlines())
    code, from_csv, err = cli("prune", tiny.path, tmp_path / "out.onnx", "--ratio", "0.4", "--granularity",
                              "block", "--importance", "angular", "--scores", scores, "--json")
    assert "internal error" not in err
    assert code == 0, err
    code, direct, err = cli("prune", tiny.path, tmp_path / "direct.onnx", "--ratio", "0.4", "--granularity",
                            "block", "--importance", "angular", "--calib", text_calib, "--calib-sequences", N_SEQ,
                            "--calib-length", SEQ_LEN, "--compensate", "none", "--json")
    assert code == 0, err
    assert json.loads(from_csv)["pruned_units"] == json.loads(direct)["pruned_units"]


def test_rescore_every_reaches_the_ratio_and_matches_one_shot_first_round(tiny, tmp_path):
    """--rescore-every N: the first N units are those of the one-shot order; the result is valid."""
    from onnxdepth.verify import verify_model

    config = PruneConfig(0.3, granularity="fine", importance="angular", calibration=_calibration(tiny))
    one_shot = prune_model(tiny.model, config)
    rescored = prune_model(tiny.model, replace(config, rescore_every=2))
    assert rescored.reduction >= 0.3
    assert rescored.pruned_units[:2] == one_shot.pruned_units[:2]
    assert rescored.plan["rescore_every"] == 2
    verify_model(rescored.model, tiny.model, {"input_ids": (1, 8), "attention_mask": (1, 8), "position_ids": (1, 8)})
