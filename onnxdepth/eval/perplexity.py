"""Language-model perplexity of an ONNX model with ONNX Runtime.

Windows: the token stream is cut into windows of ``ctx`` tokens. With ``stride=None`` the windows do not
overlap and every token but the first of each window is scored (the standard "non-overlapping" number).
With ``stride=s`` the windows start every ``s`` tokens and only the tokens not scored by an earlier window
are scored, exactly as in the Hugging Face perplexity guide
(https://huggingface.co/docs/transformers/perplexity): the first token of the stream is never scored.

The negative log-likelihood is computed in float64 with a max-shifted log-softmax over the vocabulary,
a few rows at a time so that memory stays bounded for large vocabularies.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from ..runtime import open_session
from ..runtime import progress as progress_bar
from ..tokenizer_io import has_tokenizer, load_tokenizer

__all__ = ["load_text_tokens", "perplexity", "evaluate_perplexity", "TEXT_JOINS"]

#: Rows of logits turned into float64 log-probabilities at a time (64 x 49152 x 8 B = 25 MB).
_NLL_CHUNK_ROWS = 64

#: How ``load_text_tokens`` turns the file into the string it tokenizes.
#:  - ``"raw"``: the file content as it is (WikiText ``*.raw`` / ``test.txt``: lines end in ``" \n"``).
#:  - ``"hf"``: the Hugging Face perplexity-guide string ``"\n\n".join(dataset["text"])`` rebuilt from the
#:    file: the ``datasets`` wikitext rows are the file's lines with their ``"\n"``, blank lines as ``""``.
TEXT_JOINS = ("raw", "hf")


# --------------------------------------------------------------------------------------------- tokens

def _read_text(text_file: str | os.PathLike, join: str) -> str:
    path = Path(text_file)
    if not path.is_file():
        raise InvalidArgumentError(f"text file not found: {path}")
    if join not in TEXT_JOINS:
        raise InvalidArgumentError(f"join must be one of {', '.join(TEXT_JOINS)}, got {join!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read text file {path}: {exc}") from exc
    if join == "hf":
        rows = [line if line.strip() else "" for line in text.splitlines(keepends=True)]
        text = "\n\n".join(rows)
    return text


def load_text_tokens(text_file: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                     max_tokens: int | None = None, *, add_bos: bool = True,
                     join: str = "raw") -> np.ndarray:
    """Tokenize a whole text file into one int64 token stream, truncated to ``max_tokens``.

    The file is tokenized in one piece, as the HF perplexity recipe does (``tokenizer(text)``): nothing is
    stripped or re-joined (``join="raw"``), so WikiText's own ``" \\n"`` line ends and blank lines are kept.
    ``add_bos=True`` keeps the tokenizer's default special tokens (for SmolLM2 / Llama-style tokenizers a
    single BOS at the very start of the stream; GPT-2 style tokenizers add none); ``add_bos=False``
    tokenizes with ``add_special_tokens=False``. See ``TEXT_JOINS`` for ``join``.
    """
    if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 2):
        raise InvalidArgumentError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
    tok_dir = Path(tokenizer_dir)
    if not has_tokenizer(tok_dir):
        raise ModelLoadError(f"no tokenizer found in {tok_dir} (expected tokenizer.json or tokenizer_config.json)")
    text = _read_text(text_file, join)
    tokenizer = load_tokenizer(tok_dir)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "sequence length is longer than the model maximum"
    try:
        ids = tokenizer(text, add_special_tokens=add_bos)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
    tokens = np.asarray(ids, dtype=np.int64)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if tokens.size < 2:
        raise InvalidArgumentError(f"{text_file} has fewer than 2 tokens")
    return tokens


# ---------------------------------------------------------------------------------------------- model

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def _past_shape(inp, batch: int) -> list[int]:
    """Shape of an empty past tensor: batch for dim 0, the declared ints, 0 for the (symbolic) past length."""
    shape = list(inp.shape or [])
    symbolic = [i for i, d in enumerate(shape) if i > 0 and not isinstance(d, int)]
    if len(symbolic) > 1:  # pick the past-length dim by name, e.g. 'past_sequence_length'
        named = [i for i in symbolic if any(k in str(shape[i]).lower() for k in ("past", "seq", "len"))]
        if len(named) != 1:
            raise UnsupportedModelError(
                f"cannot tell the past-length dim of input {inp.name} with shape {shape}")
        symbolic = named
    out = []
    for i, d in enumerate(shape):
        if i == 0:
            out.append(batch)
        elif i in symbolic:
            out.append(0)
        elif isinstance(d, int) and d >= 0:
            out.append(d)
        else:
            raise UnsupportedModelError(f"cannot size input {inp.name} with shape {shape}")
    return out


def _feeds(inputs, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for one batch [B, L] of token ids, for exactly the inputs the model declares."""
    batch, length = ids.shape
    feeds: dict[str, np.ndarray] = {}
    for inp in inputs:
        name = inp.name
        dtype = _ORT_DTYPES.get(inp.type)
        if name == "input_ids":
            feeds[name] = ids.astype(dtype or np.int64, copy=False)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, length), dtype=dtype or np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(length, dtype=dtype or np.int64), (batch, length)).copy()
        elif name == "token_type_ids":
            feeds[name] = np.zeros((batch, length), dtype=dtype or np.int64)
        elif name.startswith(("past_key_values", "past_key", "past_value", "past.")):
            if dtype is None:
                raise UnsupportedModelError(f"input {name} has unsupported type {inp.type}")
            feeds[name] = np.zeros(_past_shape(inp, batch), dtype=dtype)
        elif name == "use_cache_branch":
            feeds[name] = np.zeros([1] * len(inp.shape or [1]), dtype=np.bool_)
        else:
            raise UnsupportedModelError(f"model input {name!r} is not a language-model input this evaluator can feed")
    if "input_ids" not in feeds:
        raise UnsupportedModelError("model has no 'input_ids' input")
    return feeds


def _logits_name(session) -> str:
    names = [o.name for o in session.get_outputs()]
    return "logits" if "logits" in names else names[0]


# ------------------------------------------------------------------------------------------------ NLL

def _nll_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of -log softmax(logits[r])[targets[r]], in float64; logits [R, V], targets [R]."""
    total = 0.0
    for start in range(0, logits.shape[0], _NLL_CHUNK_ROWS):
        rows = logits[start:start + _NLL_CHUNK_ROWS].astype(np.float64)
        tgt = targets[start:start + _NLL_CHUNK_ROWS]
        m = rows.max(axis=1, keepdims=True)
        lse = np.log(np.exp(rows - m).sum(axis=1)) + m[:, 0]
        total += float((lse - rows[np.arange(rows.shape[0]), tgt]).sum())
    return total


def _windows(n: int, ctx: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window; ``first_scored`` is an index into the window (>= 1)."""
    out = []
    if stride is None:
        for begin in range(0, n, ctx):
            end = min(begin + ctx, n)
            if end - begin >= 2:
                out.append((begin, end, 1))
        return out
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        trg_len = end - prev_end  # tokens not scored by an earlier window
        first = max(1, (end - begin) - trg_len)
        if end - begin >= 2 and first < end - begin:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


def _batches(windows, batch_size: int) -> Iterable[list[tuple[int, int, int]]]:
    """Consecutive windows of equal length grouped into batches of at most ``batch_size``."""
    batch: list[tuple[int, int, int]] = []
    for w in windows:
        if batch and (len(batch) == batch_size or (w[1] - w[0]) != (batch[0][1] - batch[0][0])):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def perplexity(model, tokens, ctx: int = 512, stride: int | None = None, batch_size: int = 1,
               threads: int | None = None, providers: Sequence | None = None, progress: bool = True) -> dict:
    """Perplexity of ``model`` (a path or an ``onnxruntime.InferenceSession``) on the token stream ``tokens``.

    Returns ``{"task": "perplexity", "perplexity", "tokens" (number scored), "nll" (sum, nats), "seconds"}``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidArgumentError("tokens must be a 1-D integer array")
    tokens = tokens.astype(np.int64, copy=False)
    if not isinstance(ctx, (int, np.integer)) or ctx < 2:
        raise InvalidArgumentError(f"ctx must be an integer >= 2, got {ctx!r}")
    if stride is not None and (not isinstance(stride, (int, np.integer)) or not 1 <= stride <= ctx):
        raise InvalidArgumentError(f"stride must be an integer in [1, ctx={ctx}], got {stride!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if tokens.size < 2:
        raise InvalidArgumentError(f"need at least 2 tokens, got {tokens.size}")

    session = open_session(model, threads=threads, providers=providers)
    inputs = session.get_inputs()
    out_name = _logits_name(session)
    windows = _windows(int(tokens.size), int(ctx), stride)

    t0 = time.perf_counter()
    total_nll, n_scored = 0.0, 0
    with progress_bar(len(windows), "perplexity", progress, transient=False) as bar:
        for batch in _batches(windows, int(batch_size)):
            ids = np.stack([tokens[b:e] for b, e, _ in batch])
            logits = session.run([out_name], _feeds(inputs, ids))[0]
            if logits.ndim != 3 or logits.shape[:2] != ids.shape:
                raise UnsupportedModelError(f"output {out_name} has shape {list(logits.shape)}, expected "
                                            f"[{ids.shape[0]}, {ids.shape[1]}, vocab]")
            for row, (b, e, first) in enumerate(batch):
                # logits at position j-1 predict the token at position j, for scored j in [first, e-b)
                total_nll += _nll_sum(logits[row, first - 1:e - b - 1], ids[row, first:])
                n_scored += e - b - first
            bar.advance(len(batch), note=f"ppl {math.exp(total_nll / n_scored):.3f}")
    seconds = time.perf_counter() - t0
    return {"task": "perplexity", "perplexity": float(math.exp(total_nll / n_scored)), "tokens": int(n_scored),
            "nll": float(total_nll), "seconds": float(seconds)}


def evaluate_perplexity(model_path: str | os.PathLike, text_file: str | os.PathLike,
                        tokenizer_dir: str | os.PathLike | None = None, ctx: int = 512,
                        max_tokens: int | None = None, stride: int | None = None, *, add_bos: bool = True,
                        join: str = "raw", **kw) -> dict:
    """Tokenize ``text_file`` with the tokenizer beside the model (or ``tokenizer_dir``) and run ``perplexity``.

    ``kw`` goes to ``perplexity`` (``batch_size``, ``threads``, ``providers``, ``progress``).
    """
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if not Path(text_file).is_file():
        raise InvalidArgumentError(f"text file not found: {text_file}")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else path.resolve().parent
    if tokenizer_dir is not None and not tok_dir.is_dir():
        raise InvalidArgumentError(f"tokenizer directory not found: {tok_dir}")
    if not has_tokenizer(tok_dir):
        raise ModelLoadError(f"no tokenizer found in {tok_dir}; give its directory (--tokenizer DIR)")
    tokens = load_text_tokens(text_file, tok_dir, max_tokens, add_bos=add_bos, join=join)
    return perplexity(str(path), tokens, ctx=ctx, stride=stride, **kw)
