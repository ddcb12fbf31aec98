"""Training and held-out windows for healing a language model.

A text file (`--calib`: .txt / .jsonl, tokenized whole by the teacher's tokenizer) is cut into consecutive
non-overlapping windows of SEQ_LEN tokens; HELD_OUT of them, spread evenly over the text, are kept for the
held-out checks and the rest are trained on, in a seeded shuffled order, epoch after epoch. With no file the
windows are sampled from the teacher itself (top-k, seeded: data-free self-distillation), the held-out ones
with another seed; a teacher whose tokenizer has a chat template starts in a user turn and writes whole chats. An .npz (input_ids) is taken row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError

__all__ = ["TextWindows", "text_windows"]

#: Sampled windows at most, when healing data-free (sampling costs one teacher run per token; SmolLM2-135M writes
#: 512 x 128 tokens in about 4 minutes on 2 cores).
MAX_SAMPLED = 512
#: Sequences sampled side by side (one teacher run per token for the whole batch, its KV cache in memory).
SAMPLE_BATCH = 64


@dataclass
class TextWindows:
    train: np.ndarray  # [windows, seq_len] int64
    held_out: np.ndarray  # [held_out, seq_len] int64
    source: str  # what they came from, for the plan

    def held_out_batches(self, batch: int) -> list[np.ndarray]:
        return [self.held_out[start:start + batch] for start in range(0, len(self.held_out), batch)]

    def train_batches(self, batch: int, seed: int):
        """Endless [batch, seq_len] training batches: every window once per epoch, each epoch reshuffled."""
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(self.train))
            for start in range(0, len(order) - batch + 1, batch):
                yield self.train[order[start:start + batch]]
            if len(order) < batch:  # fewer windows than a batch: all of them, every step
                yield self.train


def text_windows(calib: str | None, teacher_path: str, *, seq_len: int, held_out: int, wanted: int,
                 seed: int = 0, sampled: int = 0) -> TextWindows:
    """Windows for healing; WANTED: how many training windows the run can use (caps sampling). SAMPLED: without
    CALIB, how many windows to sample (0: up to MAX_SAMPLED); with a CALIB file, that many windows sampled from
    the teacher (`_sampled`) mixed in, the held-out windows taken from both in proportion (at least one of each)."""
    if calib is None:
        return _sampled(teacher_path, seq_len=seq_len, held_out=held_out, wanted=wanted, seed=seed,
                        cap=sampled or MAX_SAMPLED)
    if not sampled:
        return _from_file(calib, teacher_path, seq_len=seq_len, held_out=held_out)
    if held_out < 2:
        raise InvalidArgumentError(f"--sampled with --calib: --held-out {held_out} cannot hold windows of both")
    file_windows = _from_file(calib, teacher_path, seq_len=seq_len, held_out=held_out)
    # Held-out windows of each source in proportion to its training windows, at least one of each.
    share = sampled / (sampled + len(file_windows.train))
    held_sampled = min(held_out - 1, max(1, round(held_out * share)))
    length = file_windows.train.shape[1]  # an .npz's rows may be shorter than --seq-len
    own = _sampled(teacher_path, seq_len=length, held_out=held_sampled, wanted=sampled, seed=seed, cap=sampled)
    kept, returned = file_windows.held_out[:held_out - held_sampled], file_windows.held_out[held_out - held_sampled:]
    train = np.concatenate([file_windows.train, returned, own.train])  # the file windows not held out train
    return TextWindows(train, np.concatenate([kept, own.held_out]),
                       f"{file_windows.source.split(', ')[0]} with {own.source.split(':')[0]} mixed in: "
                       f"{len(train) - len(own.train)} + {len(own.train)} training windows of {length} tokens, "
                       f"{len(kept)} + {held_sampled} held out")


def _from_file(calib: str, teacher_path: str, *, seq_len: int, held_out: int) -> TextWindows:
    path = Path(calib)
    if not path.exists():
        raise InvalidArgumentError(f"--calib {calib}: no such file")
    if path.suffix == ".npz":
        rows = np.load(path).get("input_ids")
        if rows is None or rows.ndim != 2:
            raise InvalidArgumentError(f"--calib {calib}: .npz needs an 'input_ids' array [sequences, length]")
        windows = np.asarray(rows, dtype=np.int64)[:, :seq_len]
    else:
        from ..calibration import _text_ids

        ids = _text_ids(calib, Path(teacher_path))
        count = len(ids) // seq_len
        # Window w is ids[w * seq_len : (w + 1) * seq_len]: consecutive, non-overlapping.
        windows = ids[:count * seq_len].reshape(count, seq_len)
    if len(windows) < held_out + 1:
        raise InvalidArgumentError(f"--calib {calib}: {len(windows)} windows of {seq_len} tokens; need more than "
                                   f"the {held_out} held out (a longer text, or smaller --seq-len / --held-out)")
    # Held-out window k sits at position k * (n / held_out) + half a stride: spread over the whole text.
    stride = len(windows) / max(held_out, 1)
    kept = np.array([int(k * stride + stride / 2) for k in range(held_out)], dtype=np.int64)
    train = np.delete(windows, kept, axis=0)
    return TextWindows(train, windows[kept], f"{calib}: {len(train)} training windows of {seq_len} tokens, "
                                             f"{held_out} held out")


def _sampled(teacher_path: str, *, seq_len: int, held_out: int, wanted: int, seed: int,
             cap: int = MAX_SAMPLED) -> TextWindows:
    from ..eval.generate import sample_sequences
    from ..tokenizer_io import load_tokenizer, user_turn_prefix

    try:
        tokenizer = load_tokenizer(Path(teacher_path).parent)
    except ModelLoadError:  # no tokenizer beside the teacher: start from token 0
        tokenizer = None
    # An instruct teacher starts inside its own chat template's user turn, so it writes chats (a question and
    # its answer); any other starts at BOS, writing plain text.
    prefix = user_turn_prefix(tokenizer) if tokenizer is not None else None
    if prefix is not None and len(prefix) > seq_len // 2:
        prefix = None  # a long system turn would leave windows with little of the model's own text
    if prefix is None:
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix, shape = [bos if bos is not None else 0], "text"
    else:
        shape = f"chats (the chat template's {len(prefix)}-token user-turn opening)"
    count = max(1, min(wanted, cap))
    train = sample_sequences(teacher_path, prefix, count, seq_len, seed=seed, batch=SAMPLE_BATCH, progress=True)
    held = (sample_sequences(teacher_path, prefix, held_out, seq_len, seed=seed + 1, batch=SAMPLE_BATCH)
            if held_out else train[:0])
    return TextWindows(train, held, f"{shape} sampled from the teacher (seed {seed}): {count} training windows of "
                                    f"{seq_len} tokens, {held_out} held out (seed {seed + 1})")
