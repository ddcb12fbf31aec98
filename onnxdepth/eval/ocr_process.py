"""Pre- and post-processing of PaddleOCR-style models, after rapidocr-onnxruntime, and their metrics.

Recognition: ``rec_preprocess`` (rapidocr's ``resize_norm_img``), ``character_list`` and
``ctc_greedy_decode`` (``CTCLabelDecode``), ``edit_distance`` and ``recognition_accuracy``. Detection:
``det_preprocess`` (``DetPreProcess``), ``db_postprocess`` (``DBPostProcess`` + ``filter_tag_det_res``) and
``detection_prf``. See ``ocr`` for how they are used and what the numbers mean.

The unclip step (rapidocr: shapely + pyclipper, neither a dependency here) is done in closed form: the box
being unclipped is a rectangle (``cv2.minAreaRect``) of sides w, h, which pyclipper offsets by
``d = w h ratio / (2 (w + h))`` with round joins; the minimum-area rectangle of that offset polygon is the
same rectangle grown by ``d`` on every side. pyclipper works on integer coordinates, so boxes can differ
from rapidocr's by a pixel.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedModelError

__all__ = ["DET_BOX_THRESH", "DET_LIMIT_SIDE", "DET_LIMIT_TYPE", "DET_MAX_CANDIDATES", "DET_THRESH",
           "DET_UNCLIP_RATIO", "REC_HEIGHT", "REC_MIN_WIDTH", "character_list", "ctc_greedy_decode", "db_postprocess",
           "det_preprocess", "detection_prf", "edit_distance", "image_hw3", "rec_preprocess", "recognition_accuracy"]

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

def image_hw3(image) -> np.ndarray:
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

    img = image_hw3(image)
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

    img = image_hw3(image)
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
