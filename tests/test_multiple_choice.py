"""MMLU-style multiple choice (onnxdepth.eval.multiple_choice) on a tiny random Llama exported with optimum.

The tokenizers are tiny byte-level BPEs trained here with the ``tokenizers`` library: one with merges, so
that " A" .. " D" are single tokens (the one-pass letter path), one without merges, so that every letter
continuation is two tokens (one run per letter). Log-likelihoods are checked against transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
torch = pytest.importorskip("torch")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import onnxdepth.eval.multiple_choice as mc  # noqa: E402
from onnxdepth.errors import InvalidArgumentError  # noqa: E402
from onnxdepth.eval import evaluate_multiple_choice, load_questions  # noqa: E402
from tiny_hf import save_tiny_llama  # noqa: E402

VOCAB = 320  # model vocabulary; the trained tokenizers stay below it

VAL = {
    "abstract_algebra_val.csv": [
        ["  What is 2 + 2?  ", "3", "4", "5", "22", "B"],
        ["Which group is cyclic?", "Z_4", "S_3", "Klein, four", "none", "A"],
        ["Order of Z_6?", "2", "3", "6", "12", "C"],
    ],
    "world_history_val.csv": [
        ["Who built Rome?", "Romans", "Greeks", "nobody, really", "Etruscans", "A"],
        ["When did it fall?", "476", "1453", "never", "unknown", "d"],
    ],
}
DEV = {
    "abstract_algebra_dev.csv": [
        ["Find 1 + 1.", "1", "2", "3", "4", "B"],
        ["Is Z_2 a group?", "yes", "no", "maybe", "sometimes", "A"],
    ],
    "world_history_dev.csv": [
        ["Where is Rome?", "Italy", "Spain", "Peru", "Chad", "A"],
        ["Capital of France?", "Lyon", "Nice", "Paris", "Metz", "C"],
    ],
}


def _write_csvs(folder: Path, files: dict) -> Path:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with (folder / name).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    return folder


def _train_tokenizer(path: Path, texts: list[str], vocab_size: int) -> Path:
    """A byte-level BPE (GPT-2 style) trained on TEXTS, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmlu")
    _write_csvs(root / "dev", DEV)
    return _write_csvs(root / "val", VAL)


@pytest.fixture(scope="module")
def export(data, tmp_path_factory):
    """(model.onnx with the merged tokenizer beside it, HF dir, bytes-only tokenizer dir)."""
    from onnxdepth.export.hf import export_hf

    base = tmp_path_factory.mktemp("llama")
    hf_dir = save_tiny_llama(base / "hf", vocab=VOCAB, hidden=32, layers=2, heads=4, kv_heads=2, inter=64,
                             initializer_range=0.2)
    config = json.loads((hf_dir / "config.json").read_text())
    config["max_position_embeddings"] = 1024  # few-shot prompts of a byte-level tokenizer are long
    (hf_dir / "config.json").write_text(json.dumps(config))
    texts = []
    for q in load_questions(data) + load_questions(data.parent / "dev"):
        for style in ("letter", "cloze"):
            texts += [mc.build_context(q, [], style) + c for c in mc.continuations(q, style)]
    texts += [" A B C D"] * 500  # make sure the letter continuations are merged into single tokens
    _train_tokenizer(hf_dir, texts, vocab_size=300)
    byte_dir = _train_tokenizer(base / "bytes", texts, vocab_size=256)  # the 256 byte symbols, no merges
    onnx_path = export_hf(hf_dir, base / "onnx", task="text-generation")
    return onnx_path, hf_dir, byte_dir


def _torch_reference(hf_dir: Path, tok_dir: Path, questions, shots_pool, shots: int) -> list[dict]:
    """Independent harness-style scores: full context+continuation sequence per choice, float64 log-softmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other
    try:
        return [_torch_item(tok, model, q, shots_pool.get(q.subject, [])[:shots]) for q in questions]
    finally:
        torch.set_num_threads(threads)


def _torch_item(tok, model, q, examples) -> dict:
    item = {}
    for style in ("letter", "cloze"):
        context = mc.build_context(q, examples, style)
        lls = []
        for continuation in mc.continuations(q, style):
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont]), use_cache=False).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            # position p predicts token p+1: continuation token i sits at len(ctx)+i
            lls.append(sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(cont)))
        item[f"{style}_ll"] = lls
    lengths = np.array([len(c) for c in q.choices], dtype=float)  # harness acc_norm: characters of the choice
    item["letter_pred"] = int(np.argmax(item["letter_ll"]))
    item["cloze_pred"] = int(np.argmax(np.array(item["cloze_ll"]) / lengths))
    return item


def _dev_pool(data: Path) -> dict:
    pool: dict = {}
    for q in load_questions(data.parent / "dev"):
        pool.setdefault(q.subject, []).append(q)
    return pool


# ----------------------------------------------------------------------------------------------- data

def test_load_questions_order_subjects_and_limit(data):
    qs = load_questions(data)
    assert [q.subject for q in qs] == ["abstract algebra"] * 3 + ["world history"] * 2
    assert qs[0].question == "  What is 2 + 2?  " and qs[0].answer == 1
    assert qs[1].choices[2] == "Klein, four" and qs[4].answer == 3  # quoted comma; lower-case answer letter
    assert [q.question for q in load_questions(data, limit=4)] == [q.question for q in qs[:4]]
    single = load_questions(data / "world_history_val.csv")
    assert len(single) == 2 and single[0].subject == "world history"


# -------------------------------------------------------------------------------------------- prompts

def test_prompt_builder_exact_strings(data):
    q = load_questions(data)[0]
    shot = _dev_pool(data)["abstract algebra"][0]
    assert mc.build_context(q, [], "letter") == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert mc.build_context(q, [shot], "letter") == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find 1 + 1.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert mc.build_context(q, [shot], "cloze") == (
        "The following are questions (with answers) about abstract algebra.\n\n"
        "Question: Find 1 + 1.\nAnswer: 2\n\n"
        "Question: What is 2 + 2?\nAnswer:")
    assert mc.continuations(q, "letter") == [" A", " B", " C", " D"]
    assert mc.continuations(q, "cloze") == [" 3", " 4", " 5", " 22"]


def test_encode_pair_moves_trailing_space(export):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export[1]))
    assert mc.encode_pair(tok, "Answer: ", "A") == mc.encode_pair(tok, "Answer:", " A")
    ctx, cont = mc.encode_pair(tok, "Answer:", " A")
    assert ctx == tok("Answer:", add_special_tokens=False)["input_ids"] and len(cont) == 1


# ----------------------------------------------------------------------------------- parity with torch

@pytest.mark.parametrize("tokenizer,shots", [("merged", 0), ("merged", 1), ("bytes", 0)])
def test_matches_transformers(export, data, tokenizer, shots, monkeypatch):
    onnx_path, hf_dir, byte_dir = export
    tok_dir = hf_dir if tokenizer == "merged" else byte_dir
    rows = []
    real_feeds = mc._feeds
    monkeypatch.setattr(mc, "_feeds", lambda inputs, ids: rows.append(ids.shape[0]) or real_feeds(inputs, ids))
    res = evaluate_multiple_choice(onnx_path, data, shots=shots, tokenizer_dir=tok_dir, threads=1,
                                   progress=False, details=True)
    # one batch per question and style; the four letter inputs (ctx + cont)[:-1] coincide, so 1 row each:
    # " A" is one token (merged: the input is the context) or two ("\u0120", "A": the context + "\u0120")
    assert rows[0::2] == [1] * 5 and all(1 <= r <= 4 for r in rows[1::2])
    from transformers import AutoTokenizer

    letter_tokens = len(mc.encode_pair(AutoTokenizer.from_pretrained(str(tok_dir)), "Answer:", " A")[1])
    assert letter_tokens == (1 if tokenizer == "merged" else 2)
    ref = _torch_reference(hf_dir, tok_dir, load_questions(data), _dev_pool(data), shots)
    assert len(res["items"]) == len(ref) == 5  # zip below must compare every question
    for got, want in zip(res["items"], ref):
        for style in ("letter", "cloze"):
            np.testing.assert_allclose(got[f"{style}_ll"], want[f"{style}_ll"], atol=1e-4, rtol=0)
            assert got[f"{style}_pred"] == want[f"{style}_pred"]
    answers = [q.answer for q in load_questions(data)]
    for style in ("letter", "cloze"):
        expected = np.mean([w[f"{style}_pred"] == a for w, a in zip(ref, answers)])
        assert res[f"{style}_accuracy"] == pytest.approx(expected)
    assert res["questions"] == 5 and res["shots"] == shots
    subjects = res["subjects"]
    assert {k: v["questions"] for k, v in subjects.items()} == {"abstract algebra": 3, "world history": 2}
    assert sum(v["letter_accuracy"] * v["questions"] for v in subjects.values()) / 5 == pytest.approx(
        res["letter_accuracy"])


def test_shots_change_the_scores_and_default_dev(export, data):
    onnx_path = export[0]
    zero = evaluate_multiple_choice(onnx_path, data, scoring="cloze", progress=False, details=True)
    one = evaluate_multiple_choice(onnx_path, data, scoring="cloze", shots=1, progress=False, details=True)
    explicit = evaluate_multiple_choice(onnx_path, data, scoring="cloze", shots=1, dev=data.parent / "dev",
                                        progress=False, details=True)
    assert "letter_accuracy" not in zero and "cloze_accuracy" in zero
    assert zero["items"][0]["cloze_ll"] != one["items"][0]["cloze_ll"]
    assert [i["cloze_ll"] for i in one["items"]] == [i["cloze_ll"] for i in explicit["items"]]
    limited = evaluate_multiple_choice(onnx_path, data, scoring="letter", limit=2, progress=False)
    assert limited["questions"] == 2 and list(limited["subjects"]) == ["abstract algebra"]


# --------------------------------------------------------------------------------------------- errors

def test_bad_inputs(export, data, tmp_path):
    onnx_path = export[0]
    run = lambda d, **kw: evaluate_multiple_choice(onnx_path, d, progress=False, **kw)  # noqa: E731
    with pytest.raises(InvalidArgumentError, match="not found"):
        run(tmp_path / "missing")
    bad = _write_csvs(tmp_path / "bad", {"x_val.csv": [["q", "a", "b", "c", "d", "A"], ["q", "a", "b", "c", "B"]]})
    with pytest.raises(InvalidArgumentError, match="row 2 has 5 fields"):
        run(bad)
    letter = _write_csvs(tmp_path / "letter", {"x_val.csv": [["q", "a", "b", "c", "d", "E"]]})
    with pytest.raises(InvalidArgumentError, match="answer must be one of"):
        run(letter)
    good = _write_csvs(tmp_path / "good", {"x_val.csv": [["q", "a", "b", "c", "d", "A"]]})
    with pytest.raises(InvalidArgumentError, match="--shots 1 needs dev data"):
        run(good, shots=1)  # no 'dev' folder beside tmp_path/good
    with pytest.raises(InvalidArgumentError, match="needs 3"):
        run(data, shots=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no .csv"):
        run(good, dev=tmp_path / "empty", shots=1)
    with pytest.raises(InvalidArgumentError, match="subject 'x'"):
        run(good, dev=data.parent / "dev", shots=1)  # no dev questions for subject x
    with pytest.raises(InvalidArgumentError, match="scoring"):
        run(data, scoring="mixed")
    with pytest.raises(InvalidArgumentError, match="shots"):
        run(data, shots=-1)


def test_cli(export, data, tmp_path, cli):
    code, out, err = cli("eval", export[0], "--task", "multiple-choice", "--data", data, "--limit", "2",
                         "--shots", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"task", "letter_accuracy", "cloze_accuracy", "questions", "shots"}
    assert result["task"] == "multiple-choice" and result["questions"] == 2 and result["shots"] == 1
    code, out, err = cli("eval", export[0], "--task", "multiple-choice", "--data", data, "--scoring", "letter",
                         "--limit", "1")
    assert code == 0 and out.startswith("multiple-choice letter accuracy") and "cloze" not in out
    bad = _write_csvs(tmp_path / "bad", {"x_val.csv": [["q", "a", "b"]]})
    good = _write_csvs(tmp_path / "good", {"x_val.csv": [["q", "a", "b", "c", "d", "A"]]})
    for argv in (["--data", tmp_path / "missing"], ["--data", bad], ["--data", good, "--shots", "2"], []):
        code, out, err = cli("eval", export[0], "--task", "multiple-choice", *argv)
        assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("onnxdepth: error:"), err
