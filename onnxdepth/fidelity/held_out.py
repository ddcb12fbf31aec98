"""The held-out data of a prune's fidelity line: inputs of the model's kind that no selection or fit saw.

- causal LMs and text encoders: `Calibration.fidelity_tokens` (windows in gaps of the calibration text the
  fits' held-out windows leave free; sampled text with another seed by default);
- one-image-input models (detectors, PP-OCR rec / det): the inputs the calibration draws, past the ones it
  used (a --calib folder or .npz), or by default photo variants / rendered lines and pages drawn with the
  fidelity seed (`calibration.FIDELITY_SEED_OFFSET`); the packaged photos themselves are skipped, since every
  calibration draw starts with them;
- anything else: seeded random inputs at the prune's input shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..calibration import FIDELITY_SEED_OFFSET
from ..config import Calibration
from ..errors import InvalidArgumentError

__all__ = ["FIDELITY_IMAGES", "HeldOut", "held_out_inputs", "model_kind"]

#: Held-out images / lines / pages of the fidelity line (pages are large: fewer of them).
FIDELITY_IMAGES = {"detector": 64, "rec": 64, "det": 4, "image": 8}
#: Calibration inputs a prune may draw from a --calib image source (Taylor: 24-32, the Conv refits: 24 + 8):
#: the fidelity check takes the inputs after these.
_CALIBRATION_DRAW = {"detector": 32, "rec": 32, "det": 8, "image": 32}
#: Seeded random batches of a model no calibration data describes.
RANDOM_BATCHES = 4


@dataclass
class HeldOut:
    """KIND ("lm", "encoder", "detector", "rec", "det", "image", "generic"), one feed dict per model run, and
    what the data is, for the line."""

    kind: str
    feeds: list[dict]
    description: str


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    init = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in init]


def model_kind(model: onnx.ModelProto, input_shapes: dict) -> str:
    """What the fidelity line measures MODEL as: "lm" (input_ids in, logits out), "encoder" (input_ids, no
    logits), a one-image-input model's kind ("detector", "rec", "det"; `taylor_calibration.image_kind`;
    "image" for a one-image model without the detector's [batch, 4 + classes, anchors] output), or "generic"."""
    names = [v.name for v in _graph_inputs(model)]
    if "input_ids" in names:
        return "lm" if any(o.name == "logits" for o in model.graph.output) else "encoder"
    shapes = list(input_shapes.values())
    # Axis 1 of an image input [1, 3, H, W]: its colour channels.
    if len(shapes) == 1 and len(shapes[0]) == 4 and shapes[0][1] == 3:
        from ..importance.taylor_calibration import image_kind

        kind = image_kind(model, shapes[0])
        if kind != "detector":
            return kind
        dims = model.graph.output[0].type.tensor_type.shape.dim
        return "detector" if len(dims) == 3 else "image"
    return "generic"


def held_out_inputs(model: onnx.ModelProto, calibration: Calibration, input_shapes: dict) -> HeldOut:
    """The fidelity line's held-out feeds for the (unpruned) MODEL, drawn as CALIBRATION draws its data."""
    kind = model_kind(model, input_shapes)
    if kind in ("lm", "encoder"):
        from ..importance.angular import model_feeds
        from ..runtime import open_session

        if _has_text(calibration):
            tokens = calibration.fidelity_tokens("the fidelity check")
            source = calibration.source or "text sampled from the model"
        else:
            tokens = _random_windows(model, calibration)
            source = "seeded random token ids (no --calib and no tokenizer beside the model)"
        session = open_session(model)
        tokens = _runnable_windows(session, tokens, input_shapes.get("input_ids"))
        inputs = {i.name: i for i in session.get_inputs()}
        # Axis 0: one window per run (the logits of a batch of windows take vocabulary x tokens floats).
        feeds = [model_feeds(inputs, tokens[i:i + 1]) for i in range(len(tokens))]
        return HeldOut(kind, feeds, f"{len(tokens)} x {tokens.shape[1]} held-out tokens of {source}")
    if kind in FIDELITY_IMAGES:
        images = _held_out_images(model, calibration, input_shapes, kind)
        name = _graph_inputs(model)[0].name
        what = {"detector": "images", "image": "images", "rec": "text lines", "det": "pages"}[kind]
        source = calibration.source or {"rec": "rendered lines", "det": "rendered pages"}.get(kind, "photo variants")
        return HeldOut(kind, [{name: image} for image in images], f"{len(images)} held-out {what} ({source})")
    from ..verify import random_feeds

    feeds = [random_feeds(model, input_shapes, seed=calibration.seed + FIDELITY_SEED_OFFSET + i)
             for i in range(RANDOM_BATCHES)]
    return HeldOut(kind, feeds, f"{RANDOM_BATCHES} seeded random inputs")


def _runnable_windows(session, tokens: np.ndarray, prune_shape: tuple | None) -> np.ndarray:
    """TOKENS [k, length], cut to the prune's own input length (PRUNE_SHAPE [batch, length], which the
    verification ran) when the model cannot take windows as long (an encoder with fewer positions)."""
    from ..importance.angular import model_feeds
    from ..runtime import first_line, ort_errors

    inputs = {i.name: i for i in session.get_inputs()}
    lengths = [tokens.shape[1]]
    if prune_shape is not None and len(prune_shape) == 2 and prune_shape[1] < tokens.shape[1]:
        lengths.append(int(prune_shape[1]))  # axis 1 of input_ids: the sequence length
    for length in lengths:
        try:
            session.run(None, model_feeds(inputs, tokens[:1, :length]))
            return tokens[:, :length]
        except ort_errors() as exc:
            error = exc
    raise InvalidArgumentError(f"the model does not run on held-out windows of {tokens.shape[1]} tokens "
                               f"({first_line(error, 160)}); give --calib-length")


def _has_text(calibration: Calibration) -> bool:
    """True if CALIBRATION can draw text: a --calib source, or a tokenizer beside the model."""
    from pathlib import Path

    from ..tokenizer_io import has_tokenizer

    if calibration.source is not None:
        return True
    return calibration.model_path is not None and has_tokenizer(Path(calibration.model_path).parent)


def _vocabulary(model: onnx.ModelProto) -> int:
    """Rows of the embedding table that input_ids index (the initializer a Gather reads input_ids from)."""
    tables = {t.name: t.dims for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids" \
                and node.input[0] in tables:
            return int(tables[node.input[0]][0])  # axis 0 of the table: one row per token id
    raise InvalidArgumentError("the fidelity check found no text to draw and no embedding table to draw token "
                               "ids for; give --calib")


def _random_windows(model: onnx.ModelProto, calibration: Calibration) -> np.ndarray:
    """FIDELITY_SEQUENCES windows [k, length] of uniform token ids, seeded apart from every calibration draw."""
    rng = np.random.default_rng(calibration.seed + FIDELITY_SEED_OFFSET)
    return rng.integers(0, _vocabulary(model), (calibration.fidelity_sequences, calibration.length), dtype=np.int64)


def _held_out_images(model: onnx.ModelProto, calibration: Calibration, input_shapes: dict,
                     kind: str) -> list[np.ndarray]:
    """FIDELITY_IMAGES[KIND] inputs [1, 3, H, W] of MODEL's image input that the calibration never drew."""
    from ..eval.detection import _photo_paths
    from ..importance.taylor_calibration import model_image_inputs

    wanted = FIDELITY_IMAGES[kind]
    image_kind = "detector" if kind == "image" else kind
    shape = next(iter(input_shapes.values()))
    if calibration.source is not None:
        # The source's inputs after every one a calibration consumer may have taken.
        used = _CALIBRATION_DRAW[kind]
        drawn = model_image_inputs(model, shape, calibration.source, kind=image_kind, count=used + wanted,
                                   flag="the fidelity check")
        inputs = list(drawn)[used:]
        if not inputs:
            raise InvalidArgumentError(f"--calib {calibration.source}: no inputs left for the fidelity check after "
                                       f"the {used} a calibration may use")
    else:
        # Photos: the first draws of every seed are the packaged photos themselves (calibration saw them).
        skip = len(_photo_paths()) if image_kind == "detector" else 0
        seed = calibration.seed + FIDELITY_SEED_OFFSET
        drawn = model_image_inputs(model, shape, None, kind=image_kind, count=skip + wanted, seed=seed,
                                   photo_seed=seed, flag="the fidelity check")
        inputs = list(drawn)[skip:]
    # Photos come stacked [N, 3, S, S]; lines and pages as [1, 3, H, W] each.
    return [np.asarray(x, dtype=np.float32).reshape(1, *np.shape(x)[-3:]) for x in inputs]
