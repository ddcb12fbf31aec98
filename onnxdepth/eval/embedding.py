"""Sentence-embedding fidelity of an ONNX encoder (e.g. a pruned all-MiniLM-L6-v2) against a reference encoder.

Both models embed the same lines through ONNX Runtime the way sentence-transformers does for
all-MiniLM-L6-v2: the tokenizer (padding, truncation), the first output ``[batch, seq, hidden]`` mean-pooled
over the attention mask (or, when the first output is not ``[batch, seq, hidden]``, a ``[batch, hidden]``
output taken as it is), then L2-normalised. ``similarity_metrics`` compares the two sets line by line:

* ``cosine``: mean cosine similarity of each line's embedding to its reference embedding (1 = identical);
* ``top1``: retrieval rate, the fraction of lines whose embedding is closest (cosine) to its *own* reference
  embedding among all the reference embeddings (ties, e.g. duplicate lines, count as hits).

A score of 1 / 1 says the model is faithful to its parent, not that either is a good encoder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from ..runtime import first_line, open_session, ort_errors
from ..tokenizer_io import has_tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_SENTENCES",
    "embedding_similarity",
    "load_tokenizer",
    "read_lines",
    "sentence_embeddings",
    "similarity_metrics",
]

#: Lines embedded by default (``--samples``).
DEFAULT_SAMPLES = 200

#: Built-in lines used when no text file is given: short, distinct sentences on unrelated topics.
DEFAULT_SENTENCES = (
    "The train to the coast leaves every morning at seven.",
    "She planted tomatoes and basil along the garden fence.",
    "Interest rates rose for the third time this year.",
    "The museum reopened after a two-year renovation.",
    "A strong wind knocked down several trees overnight.",
    "He practices the violin for an hour before dinner.",
    "The new phone has a larger battery and a brighter screen.",
    "Volcanic ash closed the airport for two days.",
    "Our team won the final match in extra time.",
    "The recipe calls for two cups of flour and one egg.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The library extends its opening hours during exams.",
    "Traffic was heavy on the bridge because of an accident.",
    "The committee will publish its report next month.",
    "My grandmother tells stories about her childhood village.",
    "The software update fixed a bug in the login screen.",
    "Whales migrate thousands of kilometres every year.",
    "The bakery on the corner sells fresh bread at dawn.",
    "A solar eclipse will be visible across the southern states.",
    "The court ruled that the contract was not valid.",
    "Children learn languages faster than most adults.",
    "The hotel room had a view of the old harbour.",
    "Prices of used cars fell sharply last quarter.",
    "The orchestra performed a symphony by Brahms.",
    "Heavy rain caused flooding in the lower part of town.",
    "He fixed the leaking tap with a new washer.",
    "The spacecraft sent back images of the icy moon.",
    "Voters will elect a new mayor in November.",
    "The cat sleeps on the windowsill in the afternoon sun.",
    "Regular exercise lowers the risk of heart disease.",
    "The startup raised ten million dollars from investors.",
    "Snow covered the mountain pass, so the road was closed.",
    "The novel follows a detective in nineteenth-century London.",
    "Engineers tested the bridge with heavy trucks.",
    "The farmer sold apples and pears at the market.",
    "A power outage left thousands of homes in the dark.",
    "The students built a robot that can climb stairs.",
    "Coffee prices increased after a poor harvest in Brazil.",
    "The film won three awards at the festival.",
    "She forgot her umbrella and got soaked on the way home.",
    "The hospital opened a new wing for children.",
    "Bees are essential for pollinating many crops.",
    "The chess champion defended her title in a close match.",
    "Our flight was delayed because of fog.",
    "The city plans to add more bicycle lanes downtown.",
    "Ancient coins were found beneath the old church.",
    "The printer on the second floor is out of paper again.",
    "Drinking enough water helps you stay focused.",
    "The company recalled thousands of faulty heaters.",
    "A rainbow appeared over the lake after the storm.",
    "The professor explained the theory of relativity with a simple example.",
    "Tickets for the concert sold out within minutes.",
    "The river has flooded its banks twice this spring.",
    "He repaired the old bicycle and gave it to his nephew.",
    "The government announced new rules for food labels.",
    "Penguins cannot fly but they are excellent swimmers.",
    "The marathon route passes through the historic centre.",
    "She is learning to write programs in Python.",
    "The price of gold reached a record high on Friday.",
    "Firefighters rescued a dog from the burning barn.",
    "The soup needs more salt and a little pepper.",
    "A new study links sleep quality to memory.",
    "The ferry crosses the strait four times a day.",
    "Workers went on strike to demand higher wages.",
)

#: Tokenizer outputs fed to the model when it declares an input of that name.
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def read_lines(text_file: str | os.PathLike, samples: int = DEFAULT_SAMPLES) -> list[str]:
    """The first ``samples`` non-empty lines of ``text_file``, stripped."""
    path = Path(text_file)
    if not path.is_file():
        raise InvalidArgumentError(f"text file not found: {path}")
    lines = []
    try:
        with open(path, encoding="utf-8") as handle:
            for raw in handle:
                line = raw.strip()
                if line:
                    lines.append(line)
                    if len(lines) == samples:
                        break
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read text file {path}: {exc}") from exc
    if not lines:
        raise InvalidArgumentError(f"{path} has no non-empty lines")
    return lines


def _embedding_output(session) -> tuple[str, str]:
    """(output name, "mean" | "pooled"): the first output when declared rank 3 (mean pooling), else the first
    declared ``[batch, hidden]`` output, else the first output (its rank is checked when it runs)."""
    outputs = session.get_outputs()
    first = outputs[0]
    if first.shape is not None and len(first.shape) == 3:
        return first.name, "mean"
    for out in outputs:
        if out.shape is not None and len(out.shape) == 2:
            return out.name, "pooled"
    return first.name, "mean"


def _feeds(inputs, encoded: dict) -> dict[str, np.ndarray]:
    """Model feeds from the tokenizer's arrays, for exactly the inputs the model declares."""
    ids = np.asarray(encoded["input_ids"])
    feeds = {}
    for inp in inputs:
        if inp.name not in _TOKEN_INPUTS:
            raise UnsupportedModelError(f"model input {inp.name!r} is not an encoder input this evaluator can "
                                        f"feed ({', '.join(_TOKEN_INPUTS)})")
        dtype = _INT_TYPES.get(inp.type, np.int64)
        if inp.name in encoded:
            feeds[inp.name] = np.asarray(encoded[inp.name]).astype(dtype, copy=False)
        elif inp.name == "token_type_ids":
            feeds[inp.name] = np.zeros(ids.shape, dtype=dtype)
        else:
            raise UnsupportedModelError(f"the tokenizer does not produce the model input {inp.name!r}")
    if "input_ids" not in feeds:
        raise UnsupportedModelError("model has no 'input_ids' input")
    return feeds


def sentence_embeddings(model, tokenizer, lines: Sequence[str], batch_size: int = 16, max_length: int = 128,
                        threads: int | None = None, providers: Sequence | None = None) -> np.ndarray:
    """L2-normalised sentence embeddings ``[len(lines), hidden]`` float64 of ``model`` (path or session).

    Lines are tokenized ``batch_size`` at a time (padding to the longest, truncation to ``max_length``
    tokens); see the module docstring for the pooling.
    """
    lines = list(lines)
    if not lines:
        raise InvalidArgumentError("no lines to embed")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise InvalidArgumentError(f"max_length must be an integer >= 2, got {max_length!r}")
    session = open_session(model, threads=threads, providers=providers)
    inputs = session.get_inputs()
    out_name, pooling = _embedding_output(session)
    chunks = []
    for start in range(0, len(lines), int(batch_size)):
        encoded = tokenizer(lines[start:start + batch_size], padding=True, truncation=True,
                            max_length=int(max_length), return_tensors="np")
        feeds = _feeds(inputs, encoded)
        try:
            out = session.run([out_name], feeds)[0].astype(np.float64)
        except ort_errors() as exc:  # shape / type mismatches
            raise UnsupportedModelError(f"the model cannot embed a tokenized batch: {first_line(exc)}") from exc
        rows = len(lines[start:start + batch_size])
        if pooling == "mean" and out.ndim == 3 and out.shape[:2] == encoded["input_ids"].shape:
            mask = np.asarray(encoded["attention_mask"], dtype=np.float64)[..., None]  # [batch, seq, 1]
            pooled = (out * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)  # sum over seq
        elif out.ndim == 2 and out.shape[0] == rows:
            pooled = out
        else:
            raise UnsupportedModelError(
                f"output {out_name} has shape {list(out.shape)}, expected [batch, seq, hidden] or [batch, hidden]")
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)  # per row
        chunks.append(pooled)
    return np.concatenate(chunks, axis=0)


def similarity_metrics(embeddings: np.ndarray, reference: np.ndarray) -> dict:
    """``{"cosine", "cosine_min", "top1"}`` of L2-normalised ``embeddings`` against ``reference`` (same rows).

    ``cosine`` is the mean (``cosine_min`` the minimum) of the row-wise cosine similarities; ``top1`` the
    fraction of rows ``i`` whose similarity to ``reference[i]`` is the highest over all reference rows.
    """
    a = np.asarray(embeddings, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise UnsupportedModelError(
            f"embeddings of shape {list(a.shape)} cannot be compared with reference embeddings {list(b.shape)}")
    sim = a @ b.T  # [row of a, row of b]: cosine similarities (rows are unit vectors)
    own = np.diagonal(sim)  # each row against its own reference
    return {"cosine": float(own.mean()), "cosine_min": float(own.min()),
            "top1": float(np.mean(own >= sim.max(axis=1)))}


def _tokenizer_dir(model, reference, tokenizer_dir) -> Path:
    """``tokenizer_dir``, else the model's directory when it holds a tokenizer, else the reference's."""
    if tokenizer_dir is not None:
        path = Path(tokenizer_dir)
        if not path.is_dir():
            raise InvalidArgumentError(f"tokenizer directory not found: {path}")
        return path
    candidates = []
    for m in (model, reference):
        if isinstance(m, (str, os.PathLike)) and Path(m).resolve().parent not in candidates:
            candidates.append(Path(m).resolve().parent)
    for directory in candidates:
        if has_tokenizer(directory):
            return directory
    where = " or ".join(str(c) for c in candidates) or "beside the models"
    raise ModelLoadError(f"no tokenizer found in {where}; give its directory (--tokenizer DIR)")


def embedding_similarity(model, reference, lines: Sequence[str] | None = None,
                         text_file: str | os.PathLike | None = None, samples: int = DEFAULT_SAMPLES,
                         tokenizer_dir: str | os.PathLike | None = None, batch_size: int = 16,
                         max_length: int = 128, threads: int | None = None,
                         providers: Sequence | None = None) -> dict:
    """Cosine similarity and top-1 retrieval of ``model``'s sentence embeddings against ``reference``'s.

    Lines: ``lines``, else the first ``samples`` non-empty lines of ``text_file``, else the first ``samples``
    of ``DEFAULT_SENTENCES``. The tokenizer comes from ``tokenizer_dir``, else beside the model, else beside
    the reference (``load_tokenizer``). Returns ``{"task": "embedding", "cosine", "cosine_min", "top1",
    "samples", "seconds"}``.
    """
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        raise InvalidArgumentError(f"samples must be a positive integer, got {samples!r}")
    for m in (model, reference):
        if isinstance(m, (str, os.PathLike)) and not Path(m).is_file():
            raise ModelLoadError(f"model file not found: {m}")
    if lines is None:
        lines = read_lines(text_file, int(samples)) if text_file is not None else list(DEFAULT_SENTENCES[:samples])
    lines = list(lines)
    tokenizer = load_tokenizer(_tokenizer_dir(model, reference, tokenizer_dir))
    t0 = time.perf_counter()
    sessions = [open_session(m, threads=threads, providers=providers) for m in (model, reference)]
    embedded, ref = (sentence_embeddings(s, tokenizer, lines, batch_size, max_length) for s in sessions)
    result = similarity_metrics(embedded, ref)
    return {"task": "embedding", **result, "samples": len(lines), "seconds": time.perf_counter() - t0}
