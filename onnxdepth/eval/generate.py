"""Greedy generation through ONNX Runtime, with the KV cache of a text-generation-with-past export.

Works on pruned models too: the past/present pairs are read off the session's inputs and outputs
(`past_key_values.<i>.key|value` -> `present.<i>.key|value`), so a layer whose attention was pruned
simply has no cache entry.
"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort

from ..runtime import open_session

__all__ = ["greedy_generate", "make_session"]

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")


def make_session(model, threads: int | None = None, providers: list[str] | None = None) -> ort.InferenceSession:
    """`runtime.open_session` under its old name (positional THREADS and PROVIDERS)."""
    return open_session(model, threads=threads, providers=providers)


def greedy_generate(model, input_ids: np.ndarray, max_new_tokens: int, *, eos_token_id: int | None = None,
                    threads: int | None = None) -> np.ndarray:
    """Greedy decoding of MAX_NEW_TOKENS after INPUT_IDS ([1, n] int64); returns the new tokens.

    With a KV cache the prompt is run once and each new token is one step; without one, the whole
    sequence is re-run each step.
    """
    session = open_session(model, threads=threads)
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [name for name in inputs if _PAST.fullmatch(name)]
    ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    cache: dict[str, np.ndarray] = {}
    for name in past_names:
        # Empty past: [batch, kv_heads, 0, head_dim], the static dims read off the declared shape.
        dims = inputs[name].shape
        cache[name] = np.zeros((1, int(dims[1]), 0, int(dims[3])), dtype=np.float32)
    generated: list[int] = []
    step_ids, seen = ids, 0
    for _ in range(max_new_tokens):
        total = seen + step_ids.shape[1]
        feeds = {"input_ids": step_ids}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(seen, total, dtype=np.int64)[None]
        feeds.update(cache)
        outputs = session.run(None, feeds)
        by_name = dict(zip([o.name for o in session.get_outputs()], outputs))
        token = int(np.argmax(by_name["logits"][0, -1]))
        generated.append(token)
        if eos_token_id is not None and token == eos_token_id:
            break
        if past_names:
            for name in past_names:
                cache[name] = by_name[name.replace("past_key_values", "present")]
            seen = total
            step_ids = np.array([[token]], dtype=np.int64)
        else:
            step_ids = np.concatenate([step_ids, [[token]]], axis=1)
    return np.array(generated, dtype=np.int64)


def sample_sequences(model, start_token, n: int, length: int, *, seed: int = 0, temperature: float = 1.0,
                     top_k: int = 50, threads: int | None = None, batch: int | None = None,
                     progress: bool = False) -> np.ndarray:
    """N sequences of LENGTH tokens sampled (top-k, seeded) from a causal LM, starting at START_TOKEN (one token
    id, or a prefix of ids that every sequence starts with), BATCH sequences at a time (all N when None). The
    draws come from one random stream for the whole call, so another BATCH gives other, equally seeded, rows."""
    from ..runtime import progress as progress_bar

    session = open_session(model, threads=threads)
    rng = np.random.default_rng(seed)
    batch = n if batch is None else max(1, batch)
    chunks = []
    with progress_bar(n, "sampling from the teacher", progress) as bar:
        for first in range(0, n, batch):
            rows = min(batch, n - first)
            chunks.append(_sample_batch(session, start_token, rows, length, rng, temperature, top_k))
            bar.advance(rows)
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, length), dtype=np.int64)


def _sample_batch(session, start_token, n: int, length: int, rng, temperature: float, top_k: int) -> np.ndarray:
    inputs = {i.name: i for i in session.get_inputs()}
    past_names = [name for name in inputs if _PAST.fullmatch(name)]
    seqs = np.tile(np.asarray(start_token, dtype=np.int64).reshape(1, -1), (n, 1))  # [n, prefix length]
    cache = {name: np.zeros((n, int(inputs[name].shape[1]), 0, int(inputs[name].shape[3])), dtype=np.float32)
             for name in past_names}
    seen = 0
    while seqs.shape[1] < length:
        step = seqs[:, seen:] if past_names else seqs
        offset = seen if past_names else 0
        total = offset + step.shape[1]
        feeds = {"input_ids": step}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = np.ones((n, total), dtype=np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(offset, total, dtype=np.int64), step.shape).copy()
        feeds.update(cache)
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        logits = outputs["logits"][:, -1].astype(np.float64) / temperature
        # Top-k sampling: keep the K largest logits per row, softmax, draw one token each.
        top = np.argpartition(-logits, top_k, axis=1)[:, :top_k]
        top_logits = np.take_along_axis(logits, top, axis=1)
        probs = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        picks = np.array([rng.choice(top_k, p=row) for row in probs])
        tokens = top[np.arange(n), picks]
        if past_names:
            for name in past_names:
                cache[name] = outputs[name.replace("past_key_values", "present")]
            seen = total
        seqs = np.concatenate([seqs, tokens[:, None]], axis=1)
    return seqs
