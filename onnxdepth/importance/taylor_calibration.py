"""Taylor importance's calibration, by model kind: what the gradient sidecar is fed and which loss it takes.

- causal LMs (a ``logits`` output): calibration token sequences, next-token cross-entropy (TaylorLMScores);
- sentence encoders (token inputs, a [batch, seq, hidden] output): calibration sentences, an in-batch
  contrastive loss (TaylorEncoderScores);
- one-image-input models: photos for detectors, rendered text lines / pages for PP-OCR rec / det, each
  with the pseudo-label loss of its output kind (TaylorSidecar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..config import Calibration
from ..errors import InvalidArgumentError, UnsupportedModelError
from ..prune.session import PruneSession

__all__ = ["attach_lm_taylor", "taylor_refresh", "taylor_sidecar"]

# Calibration images for the Taylor sidecar (packaged photos and seeded variants, see eval.detection).
TAYLOR_IMAGES = 24
# Rendered text lines (PP-OCR rec, 48 px high) and pages (PP-OCR det, 736 x 736 once preprocessed) for it.
TAYLOR_LINES = 32
TAYLOR_PAGES = 8
# Pages per gradient batch: a 736 x 736 page holds ~1 GB of activations for the backward pass.
TAYLOR_PAGE_BATCH = 2
# Sentences per batch of a sentence encoder's in-batch contrastive loss (each one's negatives are the others).
TAYLOR_SENTENCE_BATCH = 16


def attach_lm_taylor(model: onnx.ModelProto, session: PruneSession, calibration: Calibration, *,
                     batch_size: int = 4) -> None:
    """Score SESSION's units by Taylor importance (Eq. 3.8-3.10), once, on calibration data.

    A causal LM (a ``logits`` output): next-token cross-entropy on CALIBRATION's token windows. A sentence
    encoder (token inputs, a [batch, seq, hidden] output and no logits, e.g. MiniLM): the in-batch
    contrastive loss on CALIBRATION's sentences (as many as its sequences, truncated to its length). A one-image-input model
    with attention blocks (PP-OCRv4 rec's SVTR neck): the sidecar's pseudo-label loss, taken once.
    """
    if "input_ids" not in _graph_inputs(model):
        sidecar = taylor_sidecar(model, session, calibration.source, seed=calibration.seed)
        sidecar.refresh(model)
        session.importance = sidecar
        session._invalidate()
        return
    if calibration.model_path is None:
        raise InvalidArgumentError("--importance taylor: needs the model's path (its tokenizer sits beside it)")
    if "logits" not in [o.name for o in model.graph.output] and any(
            len(o.type.tensor_type.shape.dim) == 3 for o in model.graph.output):
        session.importance = _encoder_taylor(model, calibration.source, Path(calibration.model_path),
                                             n_sentences=calibration.sequences, max_length=calibration.length)
        session._invalidate()
        return
    from .taylor import TaylorLMScores

    tokens = calibration.tokens("--importance taylor")
    session.importance = TaylorLMScores(model, tokens, batch_size=batch_size)
    session._invalidate()


def _graph_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return {v.name: v for v in model.graph.input if v.name not in initializers}


def _encoder_taylor(model: onnx.ModelProto, calib: str | None, model_path: Path, *, n_sentences: int,
                    max_length: int):
    """TaylorEncoderScores of a sentence encoder on calibration sentences, tokenised by the tokenizer beside it."""
    from ..calibration import calibration_sentences, load_tokenizer
    from .taylor import TaylorEncoderScores

    sentences = calibration_sentences(calib, n_sentences)
    if len(sentences) < 2:
        raise InvalidArgumentError("--importance taylor: an encoder's contrastive loss needs at least 2 sentences")
    tokenizer = load_tokenizer(model_path.parent)
    inputs = _graph_inputs(model)
    batches = []
    for start in range(0, len(sentences), TAYLOR_SENTENCE_BATCH):
        encoded = tokenizer(sentences[start:start + TAYLOR_SENTENCE_BATCH], padding=True, truncation=True,
                            max_length=max_length, return_tensors="np")
        batches.append(_token_feeds(inputs, encoded))
    if len(batches) > 1 and len(batches[-1]["input_ids"]) < 2:
        batches.pop()  # a lone last sentence has no negatives: its loss is 0
    return TaylorEncoderScores(model, batches)


def _token_feeds(inputs: dict[str, onnx.ValueInfoProto], encoded) -> dict[str, np.ndarray]:
    """Feeds for exactly the encoder's graph inputs from the tokenizer's arrays (token types 0 if absent)."""
    
    ids = np.asarray(encoded["input_ids"])
    feeds = {}
    for name, value in inputs.items():
        dtype = np.int32 if value.type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
        if name in ("input_ids", "attention_mask", "token_type_ids") and name in encoded:
            feeds[name] = np.asarray(encoded[name]).astype(dtype)
        elif name == "token_type_ids":
            feeds[name] = np.zeros(ids.shape, dtype=dtype)
        else:
            raise UnsupportedModelError(f"--importance taylor: the encoder input {name!r} cannot be fed from a "
                                        "tokenizer (input_ids, attention_mask, token_type_ids)")
    return feeds


def image_kind(model: onnx.ModelProto, shape: tuple[int, ...]) -> str:
    """Which calibration images a one-image-input model (input SHAPE [1, 3, H, W]) gets: "det" (PP-OCR text
    detector: declared output [batch, 1, H, W]), "rec" (PP-OCR recognizer: output [batch, time, classes] made
    by a Softmax, or an input 48 px high) or "detector" (anything else: square photos)."""
    output = model.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    # Axis 1 of a DB detector's output is its single probability channel.
    if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value == 1:
        return "det"
    producer = next((n for n in model.graph.node if output.name in n.output), None)
    # Axis 2 of a [1, 3, H, W] input is the height: PP-OCR recognizers read 48-pixel text lines.
    if len(dims) == 3 and ((producer is not None and producer.op_type == "Softmax") or shape[2] == 48):
        return "rec"
    return "detector"


def model_image_inputs(model: onnx.ModelProto, shape: tuple[int, ...], calib: str | None, *, kind: str, count: int,
                       seed: int = 0, photo_seed: int = 0, flag: str) -> list[np.ndarray]:
    """COUNT calibration inputs of a one-image-input model of KIND (`image_kind`) whose input is SHAPE
    [1, 3, H, W]: --calib, else lines (rec) or pages (det) rendered with SEED, or the packaged photos (drawn
    with PHOTO_SEED) letterboxed to its square input. FLAG names the option in errors."""
    from ..calibration import calibration_images, calibration_ocr_lines, calibration_ocr_pages

    if kind == "rec":
        dims = next(iter(_graph_inputs(model).values())).type.tensor_type.shape.dim
        # Axes 2 and 3 of the declared input: a fixed height / width is used as the OCR evaluation uses it.
        height = dims[2].dim_value if dims[2].HasField("dim_value") and dims[2].dim_value > 0 else 48
        width = dims[3].dim_value if dims[3].HasField("dim_value") and dims[3].dim_value > 0 else None
        return calibration_ocr_lines(calib, count=count, seed=seed, height=height, width=width)
    if kind == "det":
        return calibration_ocr_pages(calib, count=count, seed=seed)
    if shape[2] != shape[3]:
        raise InvalidArgumentError(f"{flag}: needs an image model with a square [1, 3, S, S] input "
                                   "(give --input-shape)")
    return calibration_images(calib, shape[2], count=count, seed=photo_seed)


def taylor_sidecar(model: onnx.ModelProto, session: PruneSession, calib: str | None, *, seed: int = 0):
    """The Taylor sidecar of a one-image-input model on calibration inputs of its kind: --calib (a folder or
    an .npz), else the packaged photos (detectors) or lines / pages rendered with a seed other than the
    OCR evaluation's (PP-OCR rec / det), preprocessed as `onnxdepth eval` does."""
    from .taylor import TaylorSidecar

    shapes = session.input_shapes
    shape = next(iter(shapes.values())) if len(shapes) == 1 else ()
    if len(shape) != 4 or shape[1] != 3:
        raise InvalidArgumentError("--importance taylor: needs an image model with one [1, 3, H, W] input, a causal "
                                   "LM or a sentence encoder")
    kind = image_kind(model, shape)
    count = {"rec": TAYLOR_LINES, "det": TAYLOR_PAGES}.get(kind, TAYLOR_IMAGES)
    images = model_image_inputs(model, shape, calib, kind=kind, count=count, seed=seed,
                                flag="--importance taylor")
    sidecar = TaylorSidecar(model, images, batch_size=TAYLOR_PAGE_BATCH) if kind == "det" else \
        TaylorSidecar(model, images)
    expected = {"rec": "ctc_probs", "det": "prob_map"}.get(kind)
    if expected is not None and getattr(sidecar, "kind", expected) != expected:
        raise UnsupportedModelError(f"--importance taylor: a PP-OCR {kind} model should output {expected}, this one "
                                    f"outputs {sidecar.kind}")
    return sidecar


def taylor_refresh(model: onnx.ModelProto, session: PruneSession, calibration: Calibration):
    """The Taylor sidecar of a one-image-input model (calibration inputs of its kind, see taylor_sidecar),
    scores refreshed after every step."""
    sidecar = taylor_sidecar(model, session, calibration.source, seed=calibration.seed)

    def refresh(current_session: PruneSession) -> None:
        sidecar.refresh(current_session.to_model(model))
        current_session.importance = sidecar
        current_session._invalidate()

    return refresh
