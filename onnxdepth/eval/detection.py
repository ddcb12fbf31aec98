"""Object-detection fidelity of an ONNX model (e.g. a pruned YOLOv8) against a reference ONNX model.

There is no labelled data set here: ``fidelity_map`` takes the *reference* model's own detections as
ground truth and scores the model under test against them with COCO-style mAP. A score of 1.0 means the
model reproduces every reference box (class and location) ahead of any spurious detection of that class;
it says how faithful a pruned model is to its parent, not how accurate either is on COCO.

Pieces, all numpy (Pillow is imported only to read and letterbox photos):

* ``letterbox``: resize keeping the aspect ratio, centre on a gray (114) square canvas, NCHW-style
  ``[3, size, size]`` float32 in [0, 1] (what ultralytics feeds its exported models).
* ``decode_ultralytics``: an ultralytics (v8 / v11) detect head output ``[4 + nc, anchors]`` -> boxes
  ``[k, 6]`` = (x1, y1, x2, y2, score, class) after a confidence filter and per-class greedy NMS.
* ``average_precision``: COCO-style AP (101-point interpolated precision, greedy score-ordered matching)
  per class, averaged over the classes present in the truth, at IoU 0.5 and over 0.50:0.95.
* ``reference_images``: a small deterministic fidelity set built from photos that installed packages ship
  (ultralytics' bus.jpg / zidane.jpg, matplotlib's grace_hopper.jpg) and seeded crops / flips / rescales
  of them. It is **not** COCO and says nothing about accuracy on real data.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from ..runtime import open_session

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "PRED_CONF",
    "REFERENCE_CONF",
    "REFERENCE_PHOTOS",
    "average_precision",
    "box_iou",
    "decode_ultralytics",
    "fidelity_map",
    "letterbox",
    "nms",
    "reference_images",
]

#: IoU thresholds of the COCO "mAP@[.5:.95]" metric: 0.50, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: Recall points of COCO's interpolated precision: 0.00, 0.01, ..., 1.00.
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

#: Gray value ultralytics pads letterboxed images with.
PAD_VALUE = 114

#: (package, path inside the package) of the photos ``reference_images`` starts from.
REFERENCE_PHOTOS = (
    ("ultralytics", "assets/bus.jpg"),
    ("ultralytics", "assets/zidane.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)

#: Confidence threshold for the predictions of the model under test (as mAP evaluation does).
PRED_CONF = 0.001

#: Default confidence threshold for the reference model's detections (the ground truth). Lower than
#: ultralytics' 0.25 predict default: nudenet's YOLOv8n finds only 29 boxes at 0.25 on the 24 default
#: ``reference_images`` (59 at 0.1, 86 at 0.05).
REFERENCE_CONF = 0.1


# ------------------------------------------------------------------------------------------- images

def _to_rgb(image):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidArgumentError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read image {path}: {exc}") from exc
    if not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"expected a PIL image or an image path, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _letterbox(image, size: int, inner: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Fit ``image`` into an ``inner`` x ``inner`` square, centred on a ``size`` x ``size`` gray canvas."""
    from PIL import Image

    width, height = image.size
    scale = inner / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    canvas.paste(image, (pad_x, pad_y))
    array = (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    return np.ascontiguousarray(array), float(scale), (int(pad_x), int(pad_y))


def letterbox(image, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Letterbox ``image`` (a PIL image or a path) to ``size`` x ``size`` as ultralytics does.

    The image is resized (bilinear) by ``scale = size / max(width, height)``, so the aspect ratio is kept,
    and pasted centred on a gray (114, 114, 114) canvas. Returns ``(array [3, size, size] float32 in [0, 1],
    scale, (pad_x, pad_y))``: an original pixel (x, y) lands at (x * scale + pad_x, y * scale + pad_y).
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidArgumentError(f"size must be a positive integer, got {size!r}")
    return _letterbox(_to_rgb(image), int(size), int(size))


def _photo_paths() -> list[Path]:
    paths = []
    for package, relpath in REFERENCE_PHOTOS:
        try:
            spec = importlib.util.find_spec(package)  # locates the package without importing it
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for directory in spec.submodule_search_locations:
            candidate = Path(directory) / relpath
            if candidate.is_file():
                paths.append(candidate)
                break
    return paths


def reference_images(count: int = 24, size: int = 320, seed: int = 0) -> list[np.ndarray]:
    """A small, deterministic detection fidelity set: ``count`` letterboxed ``[3, size, size]`` images.

    It starts from the photos installed packages ship (``REFERENCE_PHOTOS``: ultralytics' bus.jpg and
    zidane.jpg, matplotlib's grace_hopper.jpg; any that are missing are skipped) and adds seeded variants of
    them until there are ``count`` images: a random crop keeping 50-100 % of each side, a horizontal flip
    (probability 1/2) and a rescale that fits the crop into 60-100 % of the canvas. Same ``seed``, same
    packages -> the same arrays.

    This is a sanity set for comparing a model with its parent (``fidelity_map``), not COCO: a handful of
    photos, no labels, and nothing to say about a model's accuracy.
    """
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise InvalidArgumentError(f"count must be a positive integer, got {count!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidArgumentError(f"size must be a positive integer, got {size!r}")
    paths = _photo_paths()
    if not paths:
        raise ModelLoadError("no reference photos found: install 'ultralytics' (assets/bus.jpg, zidane.jpg) "
                             "or 'matplotlib' (sample_data/grace_hopper.jpg)")
    from PIL import Image

    photos = [_to_rgb(p) for p in paths]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(count)):
        photo = photos[i % len(photos)]
        if i < len(photos):
            out.append(_letterbox(photo, int(size), int(size))[0])
            continue
        width, height = photo.size
        crop_w = max(1, round(width * rng.uniform(0.5, 1.0)))
        crop_h = max(1, round(height * rng.uniform(0.5, 1.0)))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        variant = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            variant = variant.transpose(Image.FLIP_LEFT_RIGHT)
        inner = max(1, round(size * rng.uniform(0.6, 1.0)))
        out.append(_letterbox(variant, int(size), inner)[0])
    return out


# ------------------------------------------------------------------------------------------ decoding

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` [n, 4] and ``b`` [m, 4] (x1, y1, x2, y2) -> [n, m] float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.45, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is > ``iou`` (torchvision's rule). With
    ``classes`` the suppression is per class (boxes of different classes never suppress each other).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise InvalidArgumentError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    if order.size == 0:
        return order.astype(np.int64)
    b = boxes[order]
    if classes is not None:
        # shift each class into its own region so that boxes of different classes never overlap
        cls = np.asarray(classes, dtype=np.float64).reshape(-1)[order]
        span = float(np.abs(b).max()) * 2.0 + 1.0
        b = b + (cls * span)[:, None]
    area = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    alive = np.ones(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if rest.size == 0:
            break
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:], b[rest, 2:])
        inter = np.clip(rb - lt, 0.0, None).prod(axis=1)
        union = area[i] + area[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = np.where(union > 0, inter / union, 0.0)
        alive[rest[overlap > iou]] = False
    return order[np.asarray(keep, dtype=np.int64)]


def decode_ultralytics(output: np.ndarray, conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> np.ndarray:
    """Detections ``[k, 6]`` = (x1, y1, x2, y2, score, class) from an ultralytics detect-head output.

    ``output`` is ``[4 + nc, anchors]`` (or ``[1, 4 + nc, anchors]``): rows 0-3 are box centre x, centre y,
    width and height in letterboxed input pixels, rows 4.. the per-class scores (already sigmoid-ed). Each
    anchor keeps its best class (score = max over the class rows); anchors with score >= ``conf`` go
    through per-class NMS at IoU ``iou`` and the ``max_det`` best are returned, highest score first, as
    float32. Coordinates stay in letterboxed pixels (undo ``letterbox``'s scale / pad to map back).
    """
    out = np.asarray(output)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2 or out.shape[0] < 5:
        raise UnsupportedModelError(
            f"detection output has shape {list(np.shape(output))}, expected [4 + classes, anchors]")
    if not 0.0 <= iou <= 1.0:
        raise InvalidArgumentError(f"iou must be in [0, 1], got {iou}")
    if not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise InvalidArgumentError(f"max_det must be a positive integer, got {max_det!r}")
    class_scores = out[4:]
    cls = class_scores.argmax(axis=0)
    score = class_scores[cls, np.arange(out.shape[1])]
    mask = score >= conf
    if not mask.any():
        return np.zeros((0, 6), dtype=np.float32)
    cx, cy, w, h = (out[r, mask].astype(np.float64) for r in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    score, cls = score[mask].astype(np.float64), cls[mask]
    keep = nms(boxes, score, iou, classes=cls)[: int(max_det)]
    return np.concatenate([boxes[keep], score[keep, None], cls[keep, None]], axis=1).astype(np.float32)


# -------------------------------------------------------------------------------------------- metric

def _check_rows(arrays, width: int, what: str) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, width)
        if a.ndim != 2 or a.shape[1] != width:
            raise InvalidArgumentError(f"{what}[{i}] has shape {list(a.shape)}, expected [n, {width}]")
        out.append(a)
    return out


def _interpolated_ap(tp: np.ndarray, n_truth: int) -> float:
    """COCO's 101-point AP from true-positive flags of the score-sorted detections of one class."""
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / n_truth
    precision = ctp / (ctp + cfp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope: max precision at recall >= r
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    valid = idx < recall.size
    q = np.zeros(_RECALL_POINTS.size)
    q[valid] = precision[idx[valid]]
    return float(q.mean())


def average_precision(pred: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                      iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS) -> dict:
    """COCO-style mean average precision of per-image predictions against per-image truth.

    ``pred[i]`` is ``[k, 6]`` (x1, y1, x2, y2, score, class), ``truth[i]`` is ``[m, 5]`` (x1, y1, x2, y2,
    class) for the same image. Per class and IoU threshold ``t``: the class's predictions over all images
    are taken in descending score order; each one matches the unmatched truth box of its class and image
    with the highest IoU >= ``t`` (true positive) or is a false positive. AP is the mean of the interpolated
    precision (max precision at recall >= r) at the 101 recall points r = 0, 0.01, ..., 1 (0 where the
    recall is never reached). The mean is over the classes present in ``truth``; predictions of other
    classes are ignored.

    Returns ``{"map50": AP at IoU 0.5, "map50_95": mean AP over ``iou_thresholds`` (0.50:0.95:0.05 by
    default), "per_threshold": [mAP per threshold], "classes": number of classes averaged}``; both maps are
    NaN when ``truth`` holds no box. ``iou_thresholds`` must contain 0.5.
    """
    if len(pred) != len(truth):
        raise InvalidArgumentError(f"{len(pred)} prediction arrays but {len(truth)} truth arrays")
    thresholds = np.asarray(list(iou_thresholds), dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or np.any((thresholds <= 0) | (thresholds > 1)):
        raise InvalidArgumentError(f"iou_thresholds must be non-empty values in (0, 1], got {list(iou_thresholds)}")
    at50 = np.nonzero(np.isclose(thresholds, 0.5))[0]
    if at50.size == 0:
        raise InvalidArgumentError(f"iou_thresholds must contain 0.5, got {list(iou_thresholds)}")
    preds = _check_rows(pred, 6, "pred")
    truths = _check_rows(truth, 5, "truth")

    classes = np.unique(np.concatenate([t[:, 4] for t in truths])) if truths else np.zeros(0)
    if classes.size == 0:
        nan = float("nan")
        return {"map50": nan, "map50_95": nan, "per_threshold": [nan] * thresholds.size, "classes": 0}

    ap = np.zeros((classes.size, thresholds.size))
    for ci, c in enumerate(classes):
        gts = [t[t[:, 4] == c, :4] for t in truths]
        n_truth = sum(g.shape[0] for g in gts)
        dets = [(img, p[p[:, 5] == c]) for img, p in enumerate(preds)]
        det_img = np.concatenate([np.full(d.shape[0], img, dtype=np.int64) for img, d in dets])
        det_all = np.concatenate([d for _, d in dets], axis=0)
        order = np.argsort(-det_all[:, 4], kind="mergesort")
        det_img, det_all = det_img[order], det_all[order]
        ious = {img: box_iou(det_all[det_img == img, :4], gts[img]) for img in np.unique(det_img)}
        rank = np.zeros(det_img.size, dtype=np.int64)  # position of each detection within its image
        for img in ious:
            sel = np.nonzero(det_img == img)[0]
            rank[sel] = np.arange(sel.size)
        for ti, t in enumerate(thresholds):
            tp = np.zeros(det_img.size, dtype=bool)
            matched = {img: np.zeros(gts[img].shape[0], dtype=bool) for img in ious}
            for d in range(det_img.size):
                img = det_img[d]
                if gts[img].shape[0] == 0:
                    continue
                row = np.where(matched[img], -1.0, ious[img][rank[d]])
                best = int(row.argmax())
                if row[best] >= t:
                    matched[img][best] = True
                    tp[d] = True
            ap[ci, ti] = _interpolated_ap(tp, n_truth)
    per_threshold = ap.mean(axis=0)
    return {"map50": float(per_threshold[at50[0]]), "map50_95": float(per_threshold.mean()),
            "per_threshold": [float(v) for v in per_threshold], "classes": int(classes.size)}


# ----------------------------------------------------------------------------------------- end to end

def _image_batch(image) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[0] != 1 or a.shape[1] != 3:
        raise InvalidArgumentError(f"each image must be [3, H, W] (or [1, 3, H, W]), got {list(np.shape(image))}")
    return np.ascontiguousarray(a)


def fidelity_map(model, reference_model, images, conf: float = REFERENCE_CONF, iou: float = 0.45,
                 threads: int | None = None, *, pred_conf: float = PRED_CONF, max_det: int = 300,
                 providers: Sequence | None = None) -> dict:
    """mAP of ``model``'s detections against ``reference_model``'s, on ``images``.

    Both models (paths or ``onnxruntime.InferenceSession``) are ultralytics detect exports (one image input
    ``[batch, 3, H, W]``, first output ``[batch, 4 + nc, anchors]``); each image (``[3, H, W]`` float in
    [0, 1], e.g. from ``reference_images``) is run at batch 1. The reference model's detections with
    score >= ``conf`` (``REFERENCE_CONF`` = 0.1 by default) after NMS at ``iou`` are the ground truth; the
    model's detections down to ``pred_conf`` (0.001, as mAP evaluation does) are the predictions, scored
    with ``average_precision``. Returns ``{"task": "detection", "map50", "map50_95", "images",
    "reference_boxes", "seconds"}``; the maps are NaN when the reference detects
    nothing (lower ``conf``).
    """
    images = list(images)
    if not images:
        raise InvalidArgumentError("no images to evaluate")
    if not 0.0 <= conf <= 1.0 or not 0.0 <= pred_conf <= 1.0:
        raise InvalidArgumentError(f"conf and pred_conf must be in [0, 1], got {conf}, {pred_conf}")
    sessions = [open_session(m, threads=threads, providers=providers) for m in (model, reference_model)]
    names = []
    for s in sessions:
        inputs = s.get_inputs()
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"detection model must have one image input, has {[i.name for i in inputs]}")
        names.append((inputs[0].name, s.get_outputs()[0].name))

    t0 = time.perf_counter()
    preds, truths = [], []
    for image in images:
        batch = _image_batch(image)
        outs = [s.run([out], {inp: batch})[0] for s, (inp, out) in zip(sessions, names)]
        for o in outs:
            if o.ndim != 3 or o.shape[0] != 1:
                raise UnsupportedModelError(
                    f"detection output has shape {list(o.shape)}, expected [1, 4 + classes, anchors]")
        preds.append(decode_ultralytics(outs[0][0], conf=pred_conf, iou=iou, max_det=max_det))
        ref = decode_ultralytics(outs[1][0], conf=conf, iou=iou, max_det=max_det)
        truths.append(ref[:, [0, 1, 2, 3, 5]])
    result = average_precision(preds, truths)
    seconds = time.perf_counter() - t0
    return {"task": "detection", "map50": result["map50"], "map50_95": result["map50_95"],
            "images": len(images), "reference_boxes": int(sum(t.shape[0] for t in truths)),
            "seconds": float(seconds)}
