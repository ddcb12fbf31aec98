"""OCR accuracy of a PaddleOCR-style ONNX model (e.g. a pruned PP-OCRv4) on synthetic, seeded text.

There is no downloaded data set: the text is rendered here with Pillow from a built-in word list, so the
ground truth is known exactly. Both halves follow rapidocr-onnxruntime's own pre- and post-processing, so
the numbers say how well the model reads clean printed Latin text and digits, not how it does on photos
(ICDAR) or Chinese.

* Recognition (first output ``[batch, time, classes]``, e.g. ``ch_PP-OCRv4_rec_infer.onnx``):
  ``render_lines`` draws single text lines (1-3 tokens: lower-case and capitalised English words and
  numbers) with a seeded font, size, padding, gray levels and noise; ``rec_preprocess`` is rapidocr's
  ``resize_norm_img`` (height 48 keeping the aspect ratio, right-padded to width 320 or the model's fixed
  width, ``(x / 255 - 0.5) / 0.5``, CHW); ``ctc_greedy_decode`` is rapidocr's ``CTCLabelDecode`` (argmax,
  repeats collapsed, blank index 0 dropped; the dictionary is the model's ``character`` metadata with
  "blank" prepended and " " appended). Metric (``recognition_accuracy``): character accuracy
  ``1 - sum(edit distance) / sum(len(truth))`` and exact-line accuracy, with spaces removed from both
  strings first as PaddleOCR's ``RecMetric`` does by default (``ignore_space=True``).
* Detection (first output ``[batch, 1, H, W]``, a text probability map, e.g.
  ``ch_PP-OCRv4_det_infer.onnx``): ``render_pages`` draws light pages with several well separated text
  items (1-2 tokens each) and keeps the line box of every item (the ink's columns, rows from cap height to
  descender); ``det_preprocess`` is rapidocr's ``DetPreProcess`` (limit side 736 "min", sides rounded to
  multiples of 32, mean / std 0.5); lines and pages are run one at a time (batch 1);
  ``db_postprocess`` is rapidocr's ``DBPostProcess`` (threshold 0.3, 2x2 dilation, box threshold 0.5 by the
  "fast" mean score, unclip ratio 1.6) followed by its ``filter_tag_det_res``. Metric
  (``detection_prf``): precision / recall / F1 of the axis-aligned hulls of the detected quadrilaterals
  against the line boxes at IoU >= 0.5, one-to-one, **line level** (one truth box per rendered item of 1-2
  words; items are spaced far enough apart that the detector has no reason to merge them). Line boxes,
  not tight ink boxes: the detector covers a line's full height, and "summer" has no ascender.

The unclip step (rapidocr: shapely + pyclipper, neither a dependency here) is done in closed form: the box
being unclipped is a rectangle (``cv2.minAreaRect``) of sides w, h, which pyclipper offsets by
``d = w h ratio / (2 (w + h))`` with round joins; the minimum-area rectangle of that offset polygon is the
same rectangle grown by ``d`` on every side. pyclipper works on integer coordinates, so boxes can differ
from rapidocr's by a pixel.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from .ocr_render import (DET_DEFAULT_SAMPLES, REC_DEFAULT_SAMPLES, WORDS, _check_count,
                         font_paths, render_lines, render_pages)

__all__ = [
    "DET_DEFAULT_SAMPLES",
    "OCR_KINDS",
    "REC_DEFAULT_SAMPLES",
    "WORDS",
    "character_list",
    "ctc_greedy_decode",
    "db_postprocess",
    "det_preprocess",
    "detection_prf",
    "edit_distance",
    "evaluate_ocr",
    "font_paths",
    "ocr_detection",
    "ocr_kind",
    "ocr_recognition",
    "rec_preprocess",
    "recognition_accuracy",
    "render_lines",
    "render_pages",
]

#: Model kinds: "rec" (CTC text recognizer) and "det" (DB text detector).
OCR_KINDS = ("rec", "det")

#: PP-OCR recognizer input: height 48, lines right-padded to at least this width (rapidocr rec_img_shape).
REC_HEIGHT = 48
REC_MIN_WIDTH = 320

#: rapidocr's detector defaults (config.yaml, Det section).
DET_LIMIT_SIDE = 736
DET_LIMIT_TYPE = "min"
DET_THRESH = 0.3
DET_BOX_THRESH = 0.5
DET_UNCLIP_RATIO = 1.6
DET_MAX_CANDIDATES = 1000
_DET_MIN_SIZE = 3  # DBPostProcess.min_size: shortest side of a candidate box, in map pixels

# --------------------------------------------------------------------------------------- recognition

def _image_hw3(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidArgumentError(f"image must be [H, W, 3], got {list(a.shape)}")
    return a


def rec_preprocess(image, height: int = REC_HEIGHT, width: int | None = None) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for one line: ``[1, 3, height, W]`` float32.

    The line (``[H, W, 3]`` uint8) is resized (OpenCV bilinear) to ``height`` keeping its aspect ratio and
    right-padded with zeros (gray after normalisation) to ``W``: with ``width`` (a model with a fixed input
    width) ``W = width`` and longer lines are squeezed into it; without, ``W = int(height * max(320 /
    48, w / h))`` as rapidocr computes for a batch of one. Pixels are normalised to ``(x / 255 - 0.5) /
    0.5``.
    """
    import cv2

    img = _image_hw3(image)
    h, w = img.shape[:2]
    ratio = w / float(h)
    if width is None:
        width = int(height * max(REC_MIN_WIDTH / REC_HEIGHT, ratio))
    resized_w = min(int(width), int(math.ceil(height * ratio)))
    resized = cv2.resize(img, (resized_w, int(height))).astype(np.float32)
    resized = resized.transpose(2, 0, 1) / 255.0  # HWC -> CHW
    resized = (resized - 0.5) / 0.5
    out = np.zeros((1, 3, int(height), int(width)), dtype=np.float32)
    out[0, :, :, :resized_w] = resized  # left-aligned, zero padding on the right
    return out


def character_list(metadata: str | Sequence[str]) -> list[str]:
    """The CTC dictionary as rapidocr builds it: ``["blank", *characters, " "]``.

    ``metadata`` is the model's ``character`` metadata string (one character per line, split with
    ``str.splitlines`` exactly as rapidocr's ``get_character_list``) or an already split list.
    """
    chars = metadata.splitlines() if isinstance(metadata, str) else list(metadata)
    if not chars:
        raise InvalidArgumentError("empty character dictionary")
    return ["blank", *chars, " "]


def ctc_greedy_decode(probs, characters: Sequence[str]) -> list[str]:
    """Greedy CTC decoding of ``probs`` ``[batch, time, classes]`` (or ``[time, classes]``) -> one string each.

    Exactly rapidocr's ``CTCLabelDecode``: the best class per time step, a step dropped when it repeats
    the previous step's class, then every blank (index 0) dropped; ``characters[i]`` is class ``i``.
    """
    p = np.asarray(probs)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise InvalidArgumentError(f"probs must be [batch, time, classes], got {list(np.shape(probs))}")
    if p.shape[2] != len(characters):
        raise UnsupportedModelError(
            f"recognizer has {p.shape[2]} classes but the dictionary has {len(characters)} entries")
    idx = p.argmax(axis=2)  # best class per (batch, time step)
    keep = np.ones(idx.shape, dtype=bool)
    keep[:, 1:] = idx[:, 1:] != idx[:, :-1]  # collapse repeats along the time axis
    keep &= idx != 0  # drop the blank
    return ["".join(characters[i] for i in row[sel]) for row, sel in zip(idx, keep)]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of single characters, cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def recognition_accuracy(predictions: Sequence[str], truths: Sequence[str], ignore_space: bool = True) -> dict:
    """``{"char_accuracy", "line_accuracy", "edits", "chars", "lines"}`` of predicted against true lines.

    Character accuracy is ``1 - sum(edit_distance) / sum(len(truth))`` (can go below 0 when the model
    invents text); line accuracy is the fraction of exact matches. With ``ignore_space`` (PaddleOCR's
    ``RecMetric`` default) spaces are removed from both strings first.
    """
    if len(predictions) != len(truths):
        raise InvalidArgumentError(f"{len(predictions)} predictions but {len(truths)} truths")
    if not truths:
        raise InvalidArgumentError("no lines to score")
    edits = chars = exact = 0
    for pred, truth in zip(predictions, truths):
        if ignore_space:
            pred, truth = pred.replace(" ", ""), truth.replace(" ", "")
        edits += edit_distance(pred, truth)
        chars += len(truth)
        exact += pred == truth
    if chars == 0:
        raise InvalidArgumentError("the true lines hold no characters")
    return {"char_accuracy": 1.0 - edits / chars, "line_accuracy": exact / len(truths), "edits": edits,
            "chars": chars, "lines": len(truths)}


# ----------------------------------------------------------------------------------------- detection

def det_preprocess(image, limit_side_len: int = DET_LIMIT_SIDE, limit_type: str = DET_LIMIT_TYPE) -> np.ndarray:
    """rapidocr's ``DetPreProcess``: ``[1, 3, H', W']`` float32 from an ``[H, W, 3]`` uint8 image.

    ``limit_type="min"`` scales the short side up to ``limit_side_len`` when it is shorter, ``"max"`` the
    long side down to it when it is longer; each side is then rounded to a multiple of 32 (Python
    ``round``, as rapidocr), resized with OpenCV bilinear and normalised with mean = std = 0.5.
    """
    import cv2

    img = _image_hw3(image)
    if limit_type not in ("min", "max"):
        raise InvalidArgumentError(f"limit_type must be 'min' or 'max', got {limit_type!r}")
    h, w = img.shape[:2]
    if limit_type == "max":
        ratio = float(limit_side_len) / max(h, w) if max(h, w) > limit_side_len else 1.0
    else:
        ratio = float(limit_side_len) / min(h, w) if min(h, w) < limit_side_len else 1.0
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    if resize_h <= 0 or resize_w <= 0:
        raise InvalidArgumentError(f"image of {w}x{h} is too small for the detector")
    resized = cv2.resize(img, (resize_w, resize_h)).astype(np.float32)
    normalised = (resized / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])  # HWC -> [1, C, H, W]


def _mini_box(points: np.ndarray) -> tuple[np.ndarray, float, tuple]:
    """rapidocr's ``get_mini_boxes``: the min-area rectangle's corners (tl, tr, br, bl order), short side, rect."""
    import cv2

    rect = cv2.minAreaRect(np.asarray(points, dtype=np.float32).reshape(-1, 1, 2))
    corners = sorted(cv2.boxPoints(rect), key=lambda p: p[0])  # left-most two first
    left = (0, 1) if corners[1][1] > corners[0][1] else (1, 0)  # (top-left, bottom-left) by y
    right = (2, 3) if corners[3][1] > corners[2][1] else (3, 2)  # (top-right, bottom-right) by y
    box = np.array([corners[left[0]], corners[right[0]], corners[right[1]], corners[left[1]]])
    return box, float(min(rect[1])), rect


def _box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """rapidocr's ``box_score_fast``: mean probability inside the quadrilateral ``box`` [4, 2] (x, y)."""
    import cv2

    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    local = box - np.array([xmin, ymin], dtype=box.dtype)  # into the crop's coordinates
    cv2.fillPoly(mask, local.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0])


def _unclip(rect: tuple, ratio: float) -> np.ndarray:
    """The rectangle ``rect`` (cv2 ``((cx, cy), (w, h), angle)``) grown by ``w h ratio / (2 (w + h))`` per side.

    Closed form of rapidocr's shapely + pyclipper round-join offset followed by ``get_mini_boxes``:
    distance = area * ratio / perimeter, and the offset polygon's minimum-area rectangle is the
    rectangle grown by that distance on all four sides.
    """
    import cv2

    (cx, cy), (w, h), angle = rect
    distance = w * h * ratio / (2.0 * (w + h)) if w + h > 0 else 0.0
    return cv2.boxPoints(((cx, cy), (w + 2 * distance, h + 2 * distance), angle))


def db_postprocess(prob, dest_size: tuple[int, int], thresh: float = DET_THRESH,
                   box_thresh: float = DET_BOX_THRESH, unclip_ratio: float = DET_UNCLIP_RATIO,
                   max_candidates: int = DET_MAX_CANDIDATES, use_dilation: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Text boxes from a DB probability map: ``(quads [k, 4, 2] float32, boxes [k, 4] float64)``.

    ``prob`` is ``[H, W]`` (or ``[1, 1, H, W]``); ``dest_size = (width, height)`` of the original image.
    rapidocr's ``DBPostProcess`` + ``filter_tag_det_res``: pixels > ``thresh`` (dilated 2x2), one candidate
    per contour (at most ``max_candidates``), its min-area rectangle dropped when its short side is < 3 or
    its mean probability < ``box_thresh``, unclipped (``_unclip``), dropped when the short side is then
    < 5, scaled to ``dest_size`` and rounded, corners ordered clockwise from top-left, clipped to the
    image and dropped when a side is <= 3 px. ``boxes`` are the quads' axis-aligned hulls (x1, y1, x2, y2).
    """
    import cv2

    p = np.asarray(prob, dtype=np.float32)
    while p.ndim > 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise InvalidArgumentError(f"probability map must be [H, W] or [1, 1, H, W], got {list(np.shape(prob))}")
    dest_w, dest_h = (int(v) for v in dest_size)
    height, width = p.shape  # map rows, columns
    bitmap = (p > thresh).astype(np.uint8)
    if use_dilation:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), dtype=np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2:]
    quads = []
    for contour in contours[:max_candidates]:
        points, short, rect = _mini_box(contour)
        if short < _DET_MIN_SIZE:
            continue
        if _box_score_fast(p, points.reshape(-1, 2)) < box_thresh:
            continue
        box, short, _ = _mini_box(_unclip(rect, unclip_ratio))
        if short < _DET_MIN_SIZE + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)  # map x -> image x
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)  # map y -> image y
        quad = _order_clockwise(box.astype(np.int32).astype(np.float32))
        quad[:, 0] = np.clip(np.trunc(quad[:, 0]), 0, dest_w - 1)  # clip_det_res: int(min(max(x, 0), w - 1))
        quad[:, 1] = np.clip(np.trunc(quad[:, 1]), 0, dest_h - 1)
        if int(np.linalg.norm(quad[0] - quad[1])) <= 3 or int(np.linalg.norm(quad[0] - quad[3])) <= 3:
            continue  # top edge (width) or left edge (height) too short
        quads.append(quad)
    quads_arr = np.asarray(quads, dtype=np.float32).reshape(-1, 4, 2)
    boxes = np.concatenate([quads_arr.min(axis=1), quads_arr.max(axis=1)], axis=1).astype(np.float64)
    return quads_arr, boxes.reshape(-1, 4)


def _order_clockwise(pts: np.ndarray) -> np.ndarray:
    """rapidocr's ``order_points_clockwise``: (top-left, top-right, bottom-right, bottom-left)."""
    by_x = pts[np.argsort(pts[:, 0]), :]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1]), :]
    tr, br = right[np.argsort(right[:, 1]), :]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def detection_prf(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou: float = 0.5) -> dict:
    """Precision / recall / F1 of per-image boxes ``[k, 4]`` (x1, y1, x2, y2) against per-image truth boxes.

    Per image, pairs are matched one-to-one greedily by descending IoU while the IoU is >= ``iou``; the
    counts are summed over images. Returns ``{"precision", "recall", "f1", "matched", "predicted",
    "truth"}``; a ratio with an empty denominator is 0.
    """
    from .detection import box_iou

    if len(predictions) != len(truths):
        raise InvalidArgumentError(f"{len(predictions)} prediction arrays but {len(truths)} truth arrays")
    if not 0.0 < iou <= 1.0:
        raise InvalidArgumentError(f"iou must be in (0, 1], got {iou}")
    matched = predicted = total = 0
    for pred, truth in zip(predictions, truths):
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
        truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
        predicted += pred.shape[0]
        total += truth.shape[0]
        overlap = box_iou(pred, truth)  # [predictions, truths]
        while overlap.size and overlap.max() >= iou:
            i, j = np.unravel_index(int(overlap.argmax()), overlap.shape)  # best remaining pair
            matched += 1
            overlap[i, :] = -1.0  # prediction i and truth j are used up
            overlap[:, j] = -1.0
    precision = matched / predicted if predicted else 0.0
    recall = matched / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "matched": matched, "predicted": predicted,
            "truth": total}


# ------------------------------------------------------------------------------------------ sessions

def _progress(label: str, total: int, enabled: bool):
    """A rich progress bar on stderr (None when disabled or rich is missing); call ``.stop()`` when done."""
    if not enabled:
        return None
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover
        return None
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=False)
    bar.start()
    bar.add_task(label, total=total)
    return bar


def _image_input(session):
    """The single ``[batch, 3, H, W]`` input of an OCR model; UnsupportedModelError otherwise."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UnsupportedModelError(f"ocr: model must have one image input, has {[i.name for i in inputs]}")
    shape = inputs[0].shape or []
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3) or inputs[0].type != "tensor(float)":
        raise UnsupportedModelError(
            f"ocr: input {inputs[0].name} is {inputs[0].type} {shape}, expected a float [batch, 3, H, W] image")
    return inputs[0]


def ocr_kind(session) -> str | None:
    """"rec" when the first output is declared ``[batch, time, classes]``, "det" when ``[batch, 1, H, W]``.

    None when the declared rank says neither (e.g. no shape information).
    """
    shape = session.get_outputs()[0].shape
    if not shape:  # no shape information
        return None
    if len(shape) == 3 and (not isinstance(shape[2], int) or shape[2] > 2):
        return "rec"
    if len(shape) == 4 and (not isinstance(shape[1], int) or shape[1] == 1):
        return "det"
    return None


def _model_characters(session) -> list[str]:
    """The CTC dictionary from the model's ``character`` metadata, else from the packaged PP-OCRv4 recognizer
    when the class counts agree (a copy that lost its metadata); ModelLoadError when there is none."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("character"):
        return character_list(meta["character"])
    classes = session.get_outputs()[0].shape[-1]
    try:
        import onnx

        from ..models_zoo import ppocr_rec

        packaged = onnx.load(str(ppocr_rec()), load_external_data=False)
        props = {p.key: p.value for p in packaged.metadata_props}
        chars = character_list(props["character"]) if props.get("character") else None
    except Exception:  # noqa: BLE001 - any failure here means no fallback dictionary
        chars = None
    if chars is not None and len(chars) == classes:
        return chars
    fits = f"its {classes} classes" if isinstance(classes, int) else "its dynamic class count"
    raise ModelLoadError("ocr rec: the model has no 'character' metadata (the CTC dictionary of a PaddleOCR "
                         f"recognizer) and the packaged PP-OCRv4 dictionary does not fit {fits}")


def _first_output(session, feed_name: str, batch: np.ndarray) -> np.ndarray:
    name = session.get_outputs()[0].name
    try:
        return session.run([name], {feed_name: batch})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for shape / type mismatches
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"ocr: the model cannot run on a {list(batch.shape)} image: {msg}") from None


def ocr_recognition(model, lines: Sequence[tuple[np.ndarray, str]] | None = None,
                    samples: int = REC_DEFAULT_SAMPLES, seed: int = 0, threads: int | None = None,
                    providers: Sequence | None = None, progress: bool = False) -> dict:
    """Character and line accuracy of a CTC recognizer on ``lines`` (default ``render_lines(samples, seed)``).

    Each line is run at batch 1 (``rec_preprocess``; height and width from the model when fixed) and
    decoded with ``ctc_greedy_decode`` and the model's dictionary. Returns ``{"task": "ocr", "kind": "rec",
    "char_accuracy", "line_accuracy", "samples", "seconds", "examples"}`` (``examples``: up to 5 misread
    lines as ``(truth, prediction)``).
    """
    from .perplexity import _open_session

    session = _open_session(model, threads, providers)
    image_input = _image_input(session)
    if lines is None:
        lines = render_lines(samples, seed)
    lines = list(lines)
    if not lines:
        raise InvalidArgumentError("no lines to evaluate")
    characters = _model_characters(session)
    _, _, in_h, in_w = image_input.shape
    height = in_h if isinstance(in_h, int) and in_h > 0 else REC_HEIGHT
    width = in_w if isinstance(in_w, int) and in_w > 0 else None

    t0 = time.perf_counter()
    predictions = []
    bar = _progress("ocr rec", len(lines), progress)
    try:
        for image, _ in lines:
            out = _first_output(session, image_input.name, rec_preprocess(image, height, width))
            if out.ndim != 3 or out.shape[0] != 1:
                raise UnsupportedModelError(
                    f"ocr rec: output has shape {list(out.shape)}, expected [1, time, classes]")
            predictions.append(ctc_greedy_decode(out, characters)[0])
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)
    finally:
        if bar is not None:
            bar.stop()
    truths = [text for _, text in lines]
    result = recognition_accuracy(predictions, truths)
    misread = [(t, p) for t, p in zip(truths, predictions) if t.replace(" ", "") != p.replace(" ", "")]
    return {"task": "ocr", "kind": "rec", "char_accuracy": result["char_accuracy"],
            "line_accuracy": result["line_accuracy"], "samples": len(lines),
            "seconds": time.perf_counter() - t0, "examples": misread[:5]}


def ocr_detection(model, pages: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                  samples: int = DET_DEFAULT_SAMPLES, seed: int = 0, threads: int | None = None,
                  providers: Sequence | None = None, progress: bool = False, iou: float = 0.5) -> dict:
    """Precision / recall / F1 of a DB text detector on ``pages`` (default ``render_pages(samples, seed)``).

    Each page goes through ``det_preprocess`` (batch 1), the model and ``db_postprocess``; the boxes are
    scored with ``detection_prf`` at ``iou``. Returns ``{"task": "ocr", "kind": "det", "precision",
    "recall", "f1", "samples", "truth_boxes", "predicted_boxes", "seconds"}``.
    """
    from .perplexity import _open_session

    session = _open_session(model, threads, providers)
    image_input = _image_input(session)
    if pages is None:
        pages = render_pages(samples, seed)
    pages = list(pages)
    if not pages:
        raise InvalidArgumentError("no pages to evaluate")

    t0 = time.perf_counter()
    predictions, truths = [], []
    bar = _progress("ocr det", len(pages), progress)
    try:
        for image, boxes in pages:
            image = _image_hw3(image)
            out = _first_output(session, image_input.name, det_preprocess(image[:, :, ::-1]))  # RGB -> BGR
            if out.ndim != 4 or out.shape[:2] != (1, 1):
                raise UnsupportedModelError(
                    f"ocr det: output has shape {list(out.shape)}, expected [1, 1, H, W]")
            predictions.append(db_postprocess(out, (image.shape[1], image.shape[0]))[1])
            truths.append(boxes)
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)
    finally:
        if bar is not None:
            bar.stop()
    result = detection_prf(predictions, truths, iou)
    return {"task": "ocr", "kind": "det", "precision": result["precision"], "recall": result["recall"],
            "f1": result["f1"], "samples": len(pages), "truth_boxes": result["truth"],
            "predicted_boxes": result["predicted"], "seconds": time.perf_counter() - t0}


def evaluate_ocr(model, kind: str | None = None, samples: int | None = None, seed: int = 0,
                 threads: int | None = None, providers: Sequence | None = None, progress: bool = False) -> dict:
    """``ocr_recognition`` or ``ocr_detection`` of ``model`` on freshly rendered data, by ``kind``.

    ``kind`` None picks it from the first output's declared shape (``ocr_kind``); an explicit ``kind`` is
    an error when the output's declared rank is not its rank (3 for rec, 4 for det), and is otherwise taken
    as it is (the output's actual shape is checked when the model runs). ``samples`` defaults to 200 lines
    (rec) or 50 pages (det).
    """
    from .perplexity import _open_session

    if kind is not None and kind not in OCR_KINDS:
        raise InvalidArgumentError(f"ocr kind must be one of {', '.join(OCR_KINDS)}, got {kind!r}")
    if samples is not None:
        _check_count(samples, "samples")
    session = _open_session(model, threads, providers)
    _image_input(session)
    output = session.get_outputs()[0]
    detected = ocr_kind(session)
    if kind is None and detected is None:
        raise UnsupportedModelError(
            f"ocr: output {output.name} has shape {output.shape}; expected [batch, time, classes] (recognition) "
            "or [batch, 1, H, W] (detection); give --ocr-kind to force one")
    if kind is not None and output.shape and len(output.shape) != (3 if kind == "rec" else 4):
        wanted = "[batch, time, classes]" if kind == "rec" else "[batch, 1, H, W]"
        raise UnsupportedModelError(
            f"ocr kind {kind}: output {output.name} has shape {output.shape}, which is not a {wanted} output")
    kind = kind or detected
    if kind == "rec":
        return ocr_recognition(session, samples=samples or REC_DEFAULT_SAMPLES, seed=seed, progress=progress)
    return ocr_detection(session, samples=samples or DET_DEFAULT_SAMPLES, seed=seed, progress=progress)
