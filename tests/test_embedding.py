"""Sentence-embedding fidelity: metrics on known cases, tiny BERT exports (with a tokenizer) through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest

from onnxdepth.errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from onnxdepth.eval.embedding import (
    DEFAULT_SENTENCES,
    embedding_similarity,
    load_tokenizer,
    read_lines,
    sentence_embeddings,
    similarity_metrics,
)

# ------------------------------------------------------------------------------------------- metrics


def _unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_similarity_metrics_known_cases():
    ref = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert similarity_metrics(ref, ref) == {"cosine": 1.0, "cosine_min": 1.0, "top1": 1.0}
    # rows rotated: each line is nearest to another line's reference, orthogonal to its own
    r = similarity_metrics(ref[[1, 2, 0]], ref)
    assert r["cosine"] == 0.0 and r["top1"] == 0.0
    # row 0 tilted by 60 degrees towards row 1: cosine 0.5 to its own, 0.866 to row 1 -> a retrieval miss
    tilted = ref.copy()
    tilted[0] = [0.5, np.sqrt(3) / 2, 0]
    r = similarity_metrics(tilted, ref)
    assert r["cosine"] == pytest.approx(2.5 / 3) and r["cosine_min"] == pytest.approx(0.5)
    assert r["top1"] == pytest.approx(2 / 3)
    # duplicate lines: a tie with the duplicate's reference still counts as a hit
    dup = _unit([[1, 0], [1, 0], [0, 1]])
    assert similarity_metrics(dup, dup)["top1"] == 1.0
    with pytest.raises(UnsupportedModelError):
        similarity_metrics(ref, ref[:2])


def test_read_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n  first line \n\n second\n\t\nthird\nfourth\n", encoding="utf-8")
    assert read_lines(path, 3) == ["first line", "second", "third"]
    assert read_lines(path, 10) == ["first line", "second", "third", "fourth"]
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError):
        read_lines(empty, 3)
    with pytest.raises(InvalidArgumentError):
        read_lines(tmp_path / "missing.txt", 3)


def test_default_sentences_distinct():
    assert len(set(DEFAULT_SENTENCES)) == len(DEFAULT_SENTENCES) >= 50


# ------------------------------------------------------------------------------------- tiny BERT


def _save_tokenizer(directory: Path) -> None:
    """A 128-entry WordPiece tokenizer (specials, letters, ##letters, common words) saved into DIRECTORY."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = sorted({w.strip(".,-").lower() for s in DEFAULT_SENTENCES for w in s.split()} - set(letters))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", *letters, *(f"##{c}" for c in letters)]
    vocab += words[: 128 - len(vocab)]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(vocab_file)).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def bert_exports(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random BertModel feature-extraction exports (seeds 0 and 1), each with its tokenizer."""
    pytest.importorskip("optimum.exporters.onnx")
    pytest.importorskip("torch")
    from onnxdepth.export.hf import export_hf
    from tiny_hf import save_tiny_bert

    root = tmp_path_factory.mktemp("emb")
    out = []
    for seed in (0, 1):
        src = save_tiny_bert(root / f"bert{seed}", seed=seed, vocab=128)
        _save_tokenizer(src)
        out.append(export_hf(src, root / f"export{seed}", task="feature-extraction"))
    return out[0], out[1]


def test_model_against_itself_is_perfect(bert_exports):
    model, _ = bert_exports
    result = embedding_similarity(model, model, samples=20, threads=1)
    assert result["task"] == "embedding" and result["samples"] == 20
    assert result["cosine"] == pytest.approx(1.0, abs=1e-9) and result["top1"] == 1.0


def test_different_model_scores_lower(bert_exports, tmp_path):
    model, other = bert_exports
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(DEFAULT_SENTENCES[:12]) + "\n\n", encoding="utf-8")
    result = embedding_similarity(other, model, text_file=text, samples=50, threads=1)
    assert result["samples"] == 12 and result["cosine"] < 0.99


def test_embeddings_mean_pooled_and_normalised(bert_exports):
    model, _ = bert_exports
    tokenizer = load_tokenizer(model.parent)
    lines = list(DEFAULT_SENTENCES[:5])
    emb = sentence_embeddings(model, tokenizer, lines, batch_size=2)
    assert emb.shape == (5, 32) and emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-12)
    # padding does not change a line's embedding: batch of 2 (padded) vs one at a time
    single = np.concatenate([sentence_embeddings(model, tokenizer, [line]) for line in lines])
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_tokenizer_beside_reference(bert_exports, tmp_path):
    model, _ = bert_exports
    copy = tmp_path / "pruned.onnx"  # a model without a tokenizer beside it: the reference's is used
    shutil.copy(model, copy)
    assert embedding_similarity(copy, model, samples=4)["top1"] == 1.0
    with pytest.raises(ModelLoadError):
        embedding_similarity(copy, copy, samples=4)


def test_cli_embedding_json(cli, bert_exports, tmp_path):
    model, _ = bert_exports
    code, out, err = cli("eval", model, "--task", "embedding", "--reference", model, "--samples", "8", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"task", "cosine", "top1", "samples"}
    assert result["samples"] == 8 and result["top1"] == 1.0 and result["cosine"] == pytest.approx(1.0)
    code, out, err = cli("eval", model, "--task", "embedding", "--reference", model, "--samples", "3",
                         "--tokenizer", model.parent)
    assert code == 0 and out.startswith("embedding: mean cosine 1.0000") and "on 3 lines" in out


def _one_error_line(code, out, err, *needles):
    assert code == 1 and out == ""
    assert err.startswith("onnxdepth: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert needles, "name at least one text the message must hold"
    for needle in needles:
        assert needle in err


def test_cli_embedding_errors(cli, bert_exports, tmp_path):
    model, _ = bert_exports
    _one_error_line(*cli("eval", model, "--task", "embedding"), "--reference")
    _one_error_line(*cli("eval", model, "--task", "embedding", "--reference", tmp_path / "missing.onnx"), "not found")
    _one_error_line(*cli("eval", model, "--task", "embedding", "--reference", model, "--samples", "0"), "samples")
    _one_error_line(*cli("eval", model, "--task", "embedding", "--reference", model, "--text",
                         tmp_path / "none.txt"), "text file not found")
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(model, lonely)
    _one_error_line(*cli("eval", lonely, "--task", "embedding", "--reference", lonely), "no tokenizer")


def test_cli_embedding_non_encoder(cli, bert_exports):
    """An image model (the packaged PP-OCRv4 recognizer) cannot be fed tokens: one line, exit 1."""
    model, _ = bert_exports
    rec = helpers.packaged_model_or_skip("ppocr-rec")
    _one_error_line(*cli("eval", rec, "--task", "embedding", "--reference", rec, "--tokenizer", model.parent),
                    "not an encoder input")
