"""MMLU-style multiple-choice accuracy of an ONNX language model with ONNX Runtime.

Data: MMLU CSV files without a header, one question per row: ``question, A, B, C, D, answer-letter``. The
subject is the file name without ``_val.csv`` / ``_dev.csv`` / ``_test.csv`` (or ``.csv``), underscores
read as spaces. Questions are taken subject by subject (subjects sorted by name), rows in file order.

Both scorings follow lm-evaluation-harness (``lm_eval/tasks/mmlu``), with ``target_delimiter=" "``,
``fewshot_delimiter="\\n\\n"`` and the ``first_n`` few-shot sampler on the dev split:

- ``letter`` = the ``mmlu`` task (``default/_default_template_yaml``): description
  ``"The following are multiple choice questions (with answers) about {subject}.\\n\\n"``, then each shot
  as ``doc_to_text + " " + letter + "\\n\\n"``, then ``doc_to_text`` of the question, where ``doc_to_text``
  is ``"{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"`` (choices as they are, not
  stripped). Continuations ``" A"`` .. ``" D"``; prediction = argmax log-likelihood (harness ``acc``).
- ``cloze`` = the ``mmlu_continuation`` task (``continuation/_continuation_template_yaml``): description
  ``"The following are questions (with answers) about {subject}.\\n\\n"``, ``doc_to_text`` =
  ``"Question: {question.strip()}\\nAnswer:"``, shots end in ``" " + answer text + "\\n\\n"``.
  Continuations ``" " + choice``; prediction = argmax of log-likelihood / ``len(choice)`` (harness
  ``acc_norm``: the length of the choice string in characters, without the delimiter space).

Log-likelihood of a continuation, as the harness's ``HFLM._encode_pair`` / ``_loglikelihood_tokens``:
trailing spaces of the context move to the continuation; ``whole = encode(context + continuation)``,
``ctx = encode(context)`` (both without special tokens, so no BOS), ``cont = whole[len(ctx):]``; the model
reads ``(ctx + cont)[:-1]`` (left-truncated to ``max_length`` tokens when given) and the continuation's
log-probabilities (float64 log-softmax over the vocabulary) are summed. Identical model inputs run once:
when every letter continuation is a single token, the four letter inputs are all ``ctx`` and one forward
pass scores A-D from its last position; otherwise each letter gets its own run.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from ..runtime import first_line, open_session, ort_errors
from ..runtime import progress as progress_bar
from ..tokenizer_io import load_tokenizer
from .perplexity import _feeds, _logits_name

__all__ = ["LETTERS", "SCORINGS", "Question", "build_context", "continuations", "encode_pair",
           "evaluate_multiple_choice", "load_questions"]

LETTERS = ("A", "B", "C", "D")
SCORINGS = ("letter", "cloze", "both")

#: Subject header (harness ``description``) per scoring style.
_HEADERS = {"letter": "The following are multiple choice questions (with answers) about {subject}.\n\n",
            "cloze": "The following are questions (with answers) about {subject}.\n\n"}
_SPLIT_SUFFIXES = ("_val.csv", "_dev.csv", "_test.csv", ".csv")
_TARGET_DELIMITER = " "
_FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into choices (0 = A)


# ----------------------------------------------------------------------------------------------- data

def _subject_of(path: Path) -> str:
    name = path.name
    for suffix in _SPLIT_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    return name.replace("_", " ").strip()


def _read_csv(path: Path) -> list[Question]:
    subject = _subject_of(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc}") from exc
    out = []
    for line, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) != 6:
            raise InvalidArgumentError(f"{path}: row {line} has {len(row)} fields, expected 6 "
                                       "(question, A, B, C, D, answer letter; no header)")
        letter = row[5].strip().upper()
        if letter not in LETTERS:
            raise InvalidArgumentError(f"{path}: row {line}: answer must be one of A, B, C, D, got {row[5]!r}")
        out.append(Question(subject, row[0], (row[1], row[2], row[3], row[4]), LETTERS.index(letter)))
    return out


def _csv_files(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InvalidArgumentError(f"{what} not found: {path}")
    files = sorted((p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(".csv")),
                   key=lambda p: (_subject_of(p), p.name))  # subjects sorted, then file name
    if not files:
        raise InvalidArgumentError(f"{what} {path} holds no .csv files")
    return files


def load_questions(path: str | os.PathLike, limit: int | None = None, *, what: str = "data") -> list[Question]:
    """Questions of a CSV file or of every ``*.csv`` in a folder (subjects sorted, rows in file order)."""
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InvalidArgumentError(f"limit must be an integer >= 1, got {limit!r}")
    questions: list[Question] = []
    for file in _csv_files(Path(path), what):
        questions += _read_csv(file)
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise InvalidArgumentError(f"{what} {path} holds no questions")
    return questions[:limit]


def _default_dev(data: Path) -> Path | None:
    """A ``dev`` folder beside the data folder (the file's folder when DATA is a file)."""
    folder = data.resolve().parent if data.is_file() else data.resolve()
    candidate = folder.parent / "dev"
    return candidate if candidate.is_dir() else None


def _shots_by_subject(dev: Path, subjects: set[str], shots: int) -> dict[str, list[Question]]:
    pool: dict[str, list[Question]] = {}
    for q in load_questions(dev, what="dev data"):
        pool.setdefault(q.subject, []).append(q)
    for subject in sorted(subjects):
        have = len(pool.get(subject, []))
        if have < shots:
            raise InvalidArgumentError(f"dev data {dev} has {have} question(s) for subject {subject!r}, "
                                       f"--shots {shots} needs {shots}")
    return pool


def _select_shots(pool: list[Question], question: Question, shots: int) -> list[Question]:
    """The first SHOTS dev questions of the subject, skipping the question itself (harness ``first_n``)."""
    selected = [q for q in pool if q != question][:shots]
    if len(selected) < shots:  # only when the dev data is the evaluated data itself
        raise InvalidArgumentError(f"dev data has {len(selected)} other question(s) for subject "
                                   f"{question.subject!r}, --shots {shots} needs {shots}")
    return selected


# --------------------------------------------------------------------------------------------- prompts

def _doc_text(q: Question, style: str) -> str:
    if style == "letter":
        lines = [q.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)]
        return "\n".join(lines) + "\nAnswer:"
    return f"Question: {q.question.strip()}\nAnswer:"


def _target(q: Question, style: str) -> str:
    return LETTERS[q.answer] if style == "letter" else q.choices[q.answer]


def build_context(question: Question, shots: Sequence[Question] = (), style: str = "letter") -> str:
    """The harness context: subject header, few-shot examples with their answers, the question."""
    if style not in _HEADERS:
        raise InvalidArgumentError(f"style must be 'letter' or 'cloze', got {style!r}")
    examples = "".join(_doc_text(s, style) + _TARGET_DELIMITER + _target(s, style) + _FEWSHOT_DELIMITER
                       for s in shots)
    return _HEADERS[style].format(subject=question.subject) + examples + _doc_text(question, style)


def continuations(question: Question, style: str = "letter") -> list[str]:
    choices = LETTERS if style == "letter" else question.choices
    return [_TARGET_DELIMITER + c for c in choices]


# ---------------------------------------------------------------------------------------------- tokens

def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as the harness's ``_encode_pair`` (no special tokens)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:  # trailing spaces belong to the continuation
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]  # continuation = the tokens after the context's token count
    if not ctx or not cont:
        raise InvalidArgumentError(f"empty context or continuation after tokenization: {continuation!r}")
    return list(ctx), list(cont)


def _model_input(ctx: list[int], cont: list[int], max_length: int | None) -> tuple[int, ...]:
    """The tokens the model reads: ctx + cont without the last token, left-truncated to MAX_LENGTH."""
    seq = ctx + cont
    if max_length is not None:
        if len(cont) > max_length:
            raise InvalidArgumentError(f"a continuation of {len(cont)} tokens does not fit max_length {max_length}")
        seq = seq[-(max_length + 1):]  # keep the continuation plus as much context as fits
    return tuple(seq[:-1])


# ----------------------------------------------------------------------------------------------- model

def _continuation_logprob(logits: np.ndarray, length: int, cont: list[int]) -> float:
    """Sum of log p(cont[i]); LOGITS [L, V] of an input of LENGTH real tokens (rows past it are padding)."""
    # position length-len(cont)+i predicts cont[i]: the last len(cont) real positions
    rows = logits[length - len(cont):length].astype(np.float64)
    m = rows.max(axis=1, keepdims=True)  # max-shifted log-sum-exp over the vocabulary axis
    lse = np.log(np.exp(rows - m).sum(axis=1)) + m[:, 0]
    return float((rows[np.arange(len(cont)), cont] - lse).sum())


def _run_group(session, inputs, out_name: str, requests: list[tuple[list[int], list[int]]],
               max_length: int | None) -> list[float]:
    """Log-likelihoods of REQUESTS (one question's choices), distinct model inputs in one batch."""
    keys = [_model_input(ctx, cont, max_length) for ctx, cont in requests]
    unique = list(dict.fromkeys(keys))  # identical inputs (single-token letters) run once
    width = max(len(k) for k in unique)
    # right padding with token 0: causal attention keeps every real position blind to the pad after it
    ids = np.zeros((len(unique), width), dtype=np.int64)
    for row, key in enumerate(unique):
        ids[row, :len(key)] = key
    feeds = _feeds(inputs, ids)
    try:
        logits = session.run([out_name], feeds)[0]
    except ort_errors() as exc:  # e.g. a token id beyond the model's vocabulary
        raise UnsupportedModelError(f"onnxruntime failed on a {list(ids.shape)} batch: {first_line(exc)}") from exc
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise UnsupportedModelError(f"output {out_name} has shape {list(logits.shape)}, "
                                    f"expected [{ids.shape[0]}, {ids.shape[1]}, vocab]")
    vocab = logits.shape[2]
    out = []
    for key, (_, cont) in zip(keys, requests):
        if max(cont) >= vocab:
            raise UnsupportedModelError(f"tokenizer id {max(cont)} is outside the model's vocabulary ({vocab})")
        out.append(_continuation_logprob(logits[unique.index(key)], len(key), cont))
    return out


def _styles(scoring: str) -> tuple[str, ...]:
    if scoring not in SCORINGS:
        raise InvalidArgumentError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    return ("letter", "cloze") if scoring == "both" else (scoring,)


def _predict(lls: list[float], q: Question, style: str) -> int:
    if style == "letter":
        return int(np.argmax(lls))
    lengths = np.array([float(len(c)) for c in q.choices])  # characters of the choice, as harness acc_norm
    return int(np.argmax(np.asarray(lls) / np.maximum(lengths, 1.0)))


def evaluate_multiple_choice(model, data: str | os.PathLike, *, dev: str | os.PathLike | None = None,
                             shots: int = 0, scoring: str = "both", limit: int | None = None,
                             tokenizer_dir: str | os.PathLike | None = None, max_length: int | None = None,
                             threads: int | None = None, providers: Sequence | None = None,
                             progress: bool = True, details: bool = False) -> dict:
    """Accuracy of MODEL (``model.onnx`` path, or a session with TOKENIZER_DIR) on MMLU-style DATA.

    Returns ``{"task": "multiple-choice", "questions", "shots", "letter_accuracy" and/or "cloze_accuracy",
    "subjects": {subject: {"questions", "letter_accuracy"/"cloze_accuracy"}}, "seconds"}``; with
    ``details=True`` also ``"items"``: per question the subject, answer and per-style log-likelihoods and
    predictions.
    """
    styles = _styles(scoring)
    if not isinstance(shots, (int, np.integer)) or shots < 0:
        raise InvalidArgumentError(f"shots must be an integer >= 0, got {shots!r}")
    if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 2):
        raise InvalidArgumentError(f"max_length must be an integer >= 2, got {max_length!r}")
    is_path = isinstance(model, (str, os.PathLike))
    if is_path and not Path(model).is_file():
        raise ModelLoadError(f"model file not found: {model}")
    if tokenizer_dir is None and not is_path:
        raise InvalidArgumentError("give tokenizer_dir when MODEL is a session")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(model).resolve().parent
    if tokenizer_dir is not None and not tok_dir.is_dir():
        raise InvalidArgumentError(f"tokenizer directory not found: {tok_dir}")

    data_path = Path(data)
    questions = load_questions(data_path, limit)
    pool: dict[str, list[Question]] = {}
    if shots:
        dev_path = Path(dev) if dev is not None else _default_dev(data_path)
        if dev_path is None:
            raise InvalidArgumentError(f"--shots {shots} needs dev data: give --dev DIR (no 'dev' folder "
                                       f"beside {data_path})")
        pool = _shots_by_subject(dev_path, {q.subject for q in questions}, int(shots))
    tokenizer = load_tokenizer(tok_dir)
    session = open_session(model, threads=threads, providers=providers)
    inputs, out_name = session.get_inputs(), _logits_name(session)

    t0 = time.perf_counter()
    correct = {style: 0 for style in styles}
    per_subject: dict[str, dict] = {}
    items = []
    with progress_bar(len(questions), "multiple-choice", progress, transient=False) as bar:
        for done, q in enumerate(questions, start=1):
            examples = _select_shots(pool.get(q.subject, []), q, int(shots)) if shots else []
            subject = per_subject.setdefault(q.subject, {"questions": 0, **{s: 0 for s in styles}})
            subject["questions"] += 1
            item = {"subject": q.subject, "answer": q.answer}
            for style in styles:
                context = build_context(q, examples, style)
                requests = [encode_pair(tokenizer, context, c) for c in continuations(q, style)]
                lls = _run_group(session, inputs, out_name, requests, max_length)
                pred = _predict(lls, q, style)
                correct[style] += pred == q.answer
                subject[style] += pred == q.answer
                item[f"{style}_ll"], item[f"{style}_pred"] = lls, pred
            if details:
                items.append(item)
            bar.advance(note="  ".join(f"{s} {correct[s] / done:.3f}" for s in styles))

    n = len(questions)
    result: dict = {"task": "multiple-choice", "questions": n, "shots": int(shots)}
    for style in styles:
        result[f"{style}_accuracy"] = correct[style] / n
    result["subjects"] = {name: {"questions": s["questions"],
                                 **{f"{st}_accuracy": s[st] / s["questions"] for st in styles}}
                          for name, s in sorted(per_subject.items())}
    result["seconds"] = time.perf_counter() - t0
    if details:
        result["items"] = items
    return result
