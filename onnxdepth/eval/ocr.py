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

The pre- and post-processing (after rapidocr) live in ``ocr_process``; this module runs the models.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from ..runtime import first_line, open_session, ort_errors
from ..runtime import progress as progress_bar
from .ocr_process import (REC_HEIGHT, character_list, ctc_greedy_decode, db_postprocess, det_preprocess,
                          detection_prf, edit_distance, image_hw3, rec_preprocess, recognition_accuracy)
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

# ------------------------------------------------------------------------------------------ sessions

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
    chars = _packaged_characters()
    if chars is not None and len(chars) == classes:
        return chars
    fits = f"its {classes} classes" if isinstance(classes, int) else "its dynamic class count"
    raise ModelLoadError("ocr rec: the model has no 'character' metadata (the CTC dictionary of a PaddleOCR "
                         f"recognizer) and the packaged PP-OCRv4 dictionary does not fit {fits}")


def _packaged_characters() -> list[str] | None:
    """The CTC dictionary of the PP-OCRv4 recognizer packaged with rapidocr; None when it is not installed."""
    import onnx
    from google.protobuf.message import DecodeError

    from ..models_zoo import ppocr_rec

    try:
        packaged = onnx.load(str(ppocr_rec()), load_external_data=False)
    except (ModelLoadError, OSError, DecodeError):
        return None  # rapidocr not installed, or its file unreadable: no fallback dictionary
    props = {p.key: p.value for p in packaged.metadata_props}
    return character_list(props["character"]) if props.get("character") else None


def _first_output(session, feed_name: str, batch: np.ndarray) -> np.ndarray:
    name = session.get_outputs()[0].name
    try:
        return session.run([name], {feed_name: batch})[0]
    except ort_errors() as exc:  # shape / type mismatches
        raise UnsupportedModelError(f"ocr: the model cannot run on a {list(batch.shape)} image: "
                                    f"{first_line(exc)}") from exc


def ocr_recognition(model, lines: Sequence[tuple[np.ndarray, str]] | None = None,
                    samples: int = REC_DEFAULT_SAMPLES, seed: int = 0, threads: int | None = None,
                    providers: Sequence | None = None, progress: bool = False) -> dict:
    """Character and line accuracy of a CTC recognizer on ``lines`` (default ``render_lines(samples, seed)``).

    Each line is run at batch 1 (``rec_preprocess``; height and width from the model when fixed) and
    decoded with ``ctc_greedy_decode`` and the model's dictionary. Returns ``{"task": "ocr", "kind": "rec",
    "char_accuracy", "line_accuracy", "samples", "seconds", "examples"}`` (``examples``: up to 5 misread
    lines as ``(truth, prediction)``).
    """
    session = open_session(model, threads=threads, providers=providers)
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
    with progress_bar(len(lines), "ocr rec", progress, transient=False) as bar:
        for image, _ in lines:
            out = _first_output(session, image_input.name, rec_preprocess(image, height, width))
            if out.ndim != 3 or out.shape[0] != 1:
                raise UnsupportedModelError(
                    f"ocr rec: output has shape {list(out.shape)}, expected [1, time, classes]")
            predictions.append(ctc_greedy_decode(out, characters)[0])
            bar.advance()
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
    session = open_session(model, threads=threads, providers=providers)
    image_input = _image_input(session)
    if pages is None:
        pages = render_pages(samples, seed)
    pages = list(pages)
    if not pages:
        raise InvalidArgumentError("no pages to evaluate")

    t0 = time.perf_counter()
    predictions, truths = [], []
    with progress_bar(len(pages), "ocr det", progress, transient=False) as bar:
        for image, boxes in pages:
            image = image_hw3(image)
            out = _first_output(session, image_input.name, det_preprocess(image[:, :, ::-1]))  # RGB -> BGR
            if out.ndim != 4 or out.shape[:2] != (1, 1):
                raise UnsupportedModelError(
                    f"ocr det: output has shape {list(out.shape)}, expected [1, 1, H, W]")
            predictions.append(db_postprocess(out, (image.shape[1], image.shape[0]))[1])
            truths.append(boxes)
            bar.advance()
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
    if kind is not None and kind not in OCR_KINDS:
        raise InvalidArgumentError(f"ocr kind must be one of {', '.join(OCR_KINDS)}, got {kind!r}")
    if samples is not None:
        _check_count(samples, "samples")
    session = open_session(model, threads=threads, providers=providers)
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
