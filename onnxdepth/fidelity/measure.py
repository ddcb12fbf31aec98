"""How close a pruned model stays to its parent on held-out data: the numbers of the fidelity line.

Each kind has one headline number in [0, 1] (1: the pruned model behaves as its parent) and its `drop`
(1 - headline), which `--max-drop` bounds:

- "lm": next-token top-1 agreement (the pruned model's argmax equals the parent's, over every position),
  with the mean KL divergence KL(parent || pruned) of the next-token distributions in nats per token;
- "detector": fidelity mAP50 (`eval.detection.fidelity_map`: the parent's detections are the truth);
- "rec": character agreement, 1 - sum(edit distance) / sum(length) of the greedy CTC readings against the
  parent's (spaces removed, as the OCR evaluation scores);
- "det": F1 of the detected text boxes against the parent's at IoU 0.5;
- anything else: output cosine (per row of each output's last axis, averaged) with the relative error
  |pruned - parent| / |parent| of every output.
"""

from __future__ import annotations

import time

import numpy as np

from ..runtime import open_session
from .held_out import HeldOut

__all__ = ["HEADLINES", "measure_fidelity"]

#: The headline metric of each kind.
HEADLINES = {"lm": "top1_agreement", "detector": "map50", "rec": "char_agreement", "det": "box_f1"}
_FALLBACK_HEADLINE = "cosine"
#: Logit rows turned into float64 log-probabilities at a time (bounded memory for large vocabularies).
_CHUNK_ROWS = 256


def measure_fidelity(pruned, reference, held_out: HeldOut, *, threads: int | None = None) -> dict:
    """The fidelity of PRUNED against REFERENCE (paths, ModelProtos or sessions) on HELD_OUT's feeds."""
    started = time.perf_counter()
    if held_out.kind == "lm":
        values = _lm(pruned, reference, held_out.feeds, threads)
    else:
        sessions = [open_session(m, threads=threads) for m in (pruned, reference)]
        measure = {"detector": _detector, "rec": _recognizer, "det": _text_boxes}.get(held_out.kind, _outputs)
        values = measure(sessions[0], sessions[1], held_out.feeds)
    metric = HEADLINES.get(held_out.kind, _FALLBACK_HEADLINE)
    value = values[metric]
    return {"kind": held_out.kind, "metric": metric, "value": value,
            "drop": None if value is None or np.isnan(value) else round(1.0 - value, 6), **values,
            "data": held_out.description, "seconds": round(time.perf_counter() - started, 1)}


def _feeds_for(session, feeds: dict) -> dict:
    names = {i.name for i in session.get_inputs()}
    # A pruned LM lacks the cache inputs of a removed attention block.
    return {k: v for k, v in feeds.items() if k in names}


def _lm(pruned, reference, feeds: list[dict], threads: int | None) -> dict:
    """Top-1 agreement and mean KL(reference || pruned) of the next-token distributions, over every position.

    The reference runs first on every feed and is closed before the pruned model opens, so the two models'
    weights are never in memory together (an LM's logits on the held-out windows are far smaller)."""
    session = open_session(reference, threads=threads)
    expected = [session.run(["logits"], _feeds_for(session, feed))[0] for feed in feeds]
    del session
    session = open_session(pruned, threads=threads)
    agree, kl_sum, count = 0, 0.0, 0
    for feed, reference_logits in zip(feeds, expected):
        logits = [session.run(["logits"], _feeds_for(session, feed))[0], reference_logits]
        # [batch, positions, vocabulary] -> one row per position.
        rows = [l.reshape(-1, l.shape[-1]) for l in logits]
        agree += int(np.sum(rows[0].argmax(axis=1) == rows[1].argmax(axis=1)))
        for start in range(0, len(rows[0]), _CHUNK_ROWS):
            p_log, q_log = (_log_softmax(r[start:start + _CHUNK_ROWS]) for r in (rows[1], rows[0]))
            kl_sum += float(np.sum(np.exp(p_log) * (p_log - q_log)))
        count += len(rows[0])
    return {"top1_agreement": round(agree / count, 6), "kl": round(kl_sum / count, 6), "positions": count}


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)  # axis 1: the vocabulary
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _detector(pruned, reference, feeds: list[dict]) -> dict:
    from ..eval.detection import fidelity_map

    images = [next(iter(feed.values())) for feed in feeds]
    result = fidelity_map(pruned, reference, images)
    return {"map50": round(float(result["map50"]), 6), "map50_95": round(float(result["map50_95"]), 6),
            "reference_boxes": result["reference_boxes"]}


def _recognizer(pruned, reference, feeds: list[dict]) -> dict:
    from ..eval.ocr import _model_characters, ctc_greedy_decode, edit_distance

    characters = _model_characters(reference)
    readings = [[], []]
    for feed in feeds:
        for reading, session in zip(readings, (pruned, reference)):
            out = session.run([session.get_outputs()[0].name], _feeds_for(session, feed))[0]
            reading.append(ctc_greedy_decode(out, characters)[0].replace(" ", ""))
    errors = sum(edit_distance(p, r) for p, r in zip(*readings))
    length = sum(len(r) for r in readings[1])
    lines_equal = sum(p == r for p, r in zip(*readings))
    return {"char_agreement": round(1.0 - errors / max(length, 1), 6),
            "line_agreement": round(lines_equal / len(feeds), 6), "lines": len(feeds)}


def _text_boxes(pruned, reference, feeds: list[dict]) -> dict:
    from ..eval.ocr import db_postprocess, detection_prf

    boxes = [[], []]
    for feed in feeds:
        image = next(iter(feed.values()))
        # Axes 2 and 3 of the [1, 3, H, W] page: the size the boxes are scaled back to (width, height).
        size = (image.shape[3], image.shape[2])
        for found, session in zip(boxes, (pruned, reference)):
            out = session.run([session.get_outputs()[0].name], _feeds_for(session, feed))[0]
            found.append(db_postprocess(out, size)[1])  # [k, 4] axis-aligned hulls
    result = detection_prf(boxes[0], boxes[1], 0.5)
    return {"box_f1": round(float(result["f1"]), 6), "reference_boxes": int(result["truth"])}


def _outputs(pruned, reference, feeds: list[dict]) -> dict:
    """Mean cosine of output rows (each output's last axis) and mean relative error, over the common outputs."""
    cosines, errors = [], []
    names = [o.name for o in reference.get_outputs() if o.name in {p.name for p in pruned.get_outputs()}]
    for feed in feeds:
        for p, r in zip(pruned.run(names, _feeds_for(pruned, feed)), reference.run(names, _feeds_for(reference, feed))):
            p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
            errors.append(float(np.linalg.norm(p - r) / max(np.linalg.norm(r), 1e-12)))
            # Rows along the last axis (a feature vector per token / anchor / sample).
            p_rows, r_rows = p.reshape(-1, p.shape[-1] if p.ndim else 1), r.reshape(-1, r.shape[-1] if r.ndim else 1)
            norms = np.linalg.norm(p_rows, axis=1) * np.linalg.norm(r_rows, axis=1)
            cosines.append(float(np.mean(np.sum(p_rows * r_rows, axis=1) / np.maximum(norms, 1e-12))))
    return {"cosine": round(float(np.mean(cosines)), 6), "relative_error": round(float(np.mean(errors)), 6),
            "outputs": len(names)}
