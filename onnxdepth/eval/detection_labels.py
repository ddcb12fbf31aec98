"""Detection mAP against ground-truth labels: a folder of images with YOLO txt labels or a COCO json.

YOLO txt: one ``<image stem>.txt`` per image (in ``labels`` or, if that is a folder of images and labels,
beside the images), rows ``class cx cy w h`` normalised to the image size; an image without a file has no
objects. COCO json: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``bbox`` =
[x, y, w, h] in pixels, ``category_id``) and ``categories``; class index = position of the category id
in the sorted category ids (ultralytics' convention for the 80 COCO classes). Images are letterboxed to
the model's size, detections (score >= 0.001, NMS 0.45) are mapped back to original pixels, and mAP50 /
mAP50-95 are computed by `detection.average_precision`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedModelError
from ..runtime import open_session
from .detection import PRED_CONF, average_precision, decode_ultralytics, letterbox

__all__ = ["IMAGE_SUFFIXES", "load_yolo_labels", "load_coco_labels", "labelled_map"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size  # (width, height)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise InvalidArgumentError(f"{path}: not a readable image ({type(exc).__name__})") from exc


def load_yolo_labels(images: list[Path], labels_dir: Path) -> list[np.ndarray]:
    """Per image, boxes [k, 5] = (x1, y1, x2, y2, class) in original pixels from YOLO txt files."""
    truths = []
    for image in images:
        width, height = _image_size(image)
        file = labels_dir / f"{image.stem}.txt"
        rows = []
        if file.exists():
            for line_no, line in enumerate(file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    cls, cx, cy, w, h = (float(v) for v in line.split()[:5])
                except ValueError as exc:
                    raise InvalidArgumentError(f"{file}:{line_no}: expected 'class cx cy w h'") from exc
                # Normalised centre / size -> pixel corners of the original image.
                rows.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                             (cy + h / 2) * height, cls])
        truths.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    return truths


def load_coco_labels(images: list[Path], coco_json: Path) -> list[np.ndarray]:
    """Per image, boxes [k, 5] = (x1, y1, x2, y2, class) in original pixels from a COCO json."""
    try:
        data = json.loads(coco_json.read_text())
        ids = {Path(entry["file_name"]).name: entry["id"] for entry in data["images"]}
        classes = {cat: k for k, cat in enumerate(sorted(c["id"] for c in data["categories"]))}
        by_image: dict = {}
        for ann in data["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h, classes[ann["category_id"]]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"--labels {coco_json}: not a COCO detection json ({type(exc).__name__}: {exc})"
                                   ) from exc
    missing = [p.name for p in images if p.name not in ids]
    if missing:
        raise InvalidArgumentError(f"--labels {coco_json}: no entry for image {missing[0]}")
    return [np.asarray(by_image.get(ids[p.name], []), dtype=np.float32).reshape(-1, 5) for p in images]


def labelled_map(model, image_dir: str | Path, labels: str | Path | None = None, *, imgsz: int = 640,
                 iou: float = 0.45, threads: int | None = None, limit: int | None = None) -> dict:
    """mAP50 / mAP50-95 of an ultralytics-style detector on IMAGE_DIR against LABELS (YOLO txt folder,
    default IMAGE_DIR itself, or a COCO .json)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InvalidArgumentError(f"--image-dir {image_dir}: not a folder")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not images:
        raise InvalidArgumentError(f"--image-dir {image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    labels = Path(labels) if labels else image_dir
    if labels.suffix == ".json":
        truths = load_coco_labels(images, labels)
    elif labels.is_dir():
        truths = load_yolo_labels(images, labels)
    else:
        raise InvalidArgumentError(f"--labels {labels}: expected a folder of YOLO txt files or a COCO .json")
    session = open_session(model, threads=threads)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UnsupportedModelError(f"detection model must have one image input, has {[i.name for i in inputs]}")
    name, output = inputs[0].name, session.get_outputs()[0].name
    started = time.perf_counter()
    preds = []
    for path in images:
        array, scale, (pad_x, pad_y) = letterbox(path, imgsz)
        out = session.run([output], {name: array[None]})[0]
        if out.ndim != 3:
            raise UnsupportedModelError(f"detection output has shape {list(out.shape)}, expected [1, 4 + classes, "
                                        "anchors]")
        det = decode_ultralytics(out[0], conf=PRED_CONF, iou=iou)
        # Letterboxed pixels -> original pixels: undo the pad, then the scale (x_in = x * scale + pad).
        det[:, [0, 2]] = (det[:, [0, 2]] - pad_x) / scale
        det[:, [1, 3]] = (det[:, [1, 3]] - pad_y) / scale
        preds.append(det)
    result = average_precision(preds, truths)
    return {"task": "detection", "map50": result["map50"], "map50_95": result["map50_95"], "images": len(images),
            "label_boxes": int(sum(len(t) for t in truths)), "seconds": time.perf_counter() - started}
