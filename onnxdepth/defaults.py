"""What `auto` options mean for one model: the defaults a plain `prune` gets, resolved once per prune.

`PruneConfig` leaves importance, granularity and compensation at `auto`: the best mode that runs with what
is installed, measured (docs/results.md), on `--calib` data or else on the embedded default calibration
(text sampled from the model, the Python documentation for encoders, the packaged photos, rendered text
lines and pages; each with a warning that real data is better):

- transformers with a residual stream the fits apply to (pre-norm Llama family, post-norm BERT encoders):
  whole layers, angular importance (cross-entropy ranks worse: SmolLM2 at 0.2, 157.6 against 54.8), and the
  least-squares refits folded into the surviving weights (`compensate`);
- other transformers: whole layers, Gromov et al.'s most similar contiguous run (angular);
- one-image-input models (CNN detectors, PP-OCR rec / det): Taylor importance (the PyTorch sidecar, when
  torch and onnx2torch are installed and the output has a label-free loss) and the surviving Convs refitted;
  without torch, or for another output (a classifier's logits, a feature map), angular distance on the graph
  outputs (`importance.output_damage`: each unit pruned alone, its nearest Convs refitted, and measured;
  YOLOv8n at 0.2: fidelity mAP50 0.82 against magnitude's 0.19, both with the refits);
- anything else (no calibration data can be drawn for it): magnitude, fine, no fit.

A text model without a tokenizer beside it cannot be calibrated and gets the last row too. The plan records
the resolved values, never `auto`, and what was asked (`requested`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

from .config import AUTO, PruneConfig
from .errors import InvalidArgumentError

__all__ = ["resolve_defaults", "taylor_available"]

logger = logging.getLogger(__name__)


def _has_held_out(config: PruneConfig) -> bool:
    """True if the calibration text leaves windows for the fits' held-out check; auto skips the fits (with a
    warning) on a file too short for them, where an explicit --compensate lstsq is refused."""
    try:
        return len(config.calibration.held_out_tokens("--compensate auto")) > 0
    except InvalidArgumentError as exc:
        logger.warning("no least-squares compensation: %s", exc)
        return False


def taylor_available() -> bool:
    """True if the Taylor sidecar can run: torch and onnx2torch are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx2torch"))


def _calibratable_text(config: PruneConfig) -> bool:
    """True if text calibration can be drawn: --calib given, or a tokenizer beside the model (default text)."""
    from .tokenizer_io import has_tokenizer

    if config.calibration.source is not None:
        return True
    model_path = config.calibration.model_path
    if model_path is not None and has_tokenizer(Path(model_path).parent):
        return True
    logger.warning("no --calib and no tokenizer beside the model: the data-free defaults are used (magnitude "
                   "importance, no reconstruction); give --calib for a better prune")
    return False


def _taylor_output(session) -> bool:
    """True if the first graph output of SESSION's image model has a label-free Taylor loss (`taylor.output_kind`),
    judged from its inferred shape: detections [batch, 4 + classes, anchors], a probability map [batch, 1, H, W]
    or CTC probabilities [batch, time, classes]."""
    shape = session.shapes.get(session.graph.outputs[0].name)
    if not shape or not all(isinstance(d, int) for d in shape):
        return False
    # Axis 1: the box + class rows of a detector's output, the single channel of a probability map.
    return (len(shape) == 3 and (shape[1] > 4 or shape[2] > 4)) or (len(shape) == 4 and shape[1] == 1)


def _model_defaults(config: PruneConfig, session) -> tuple[str, str, bool]:
    """(importance, granularity, whether the least-squares refits apply) of SESSION's model."""
    from .compensate import postnorm_sites, stream_writers
    from .compensate.images import is_image_model

    if is_image_model(session):
        if not _taylor_output(session):
            return "angular", "fine", True  # no label-free Taylor loss for this output: measured output damage
        if taylor_available():
            return "taylor", "fine", True
        logger.warning("torch / onnx2torch are not installed: angular importance on the graph outputs instead of "
                       "Taylor (pip install 'onnxdepth[taylor]' after torch for a faster, better prune)")
        return "angular", "fine", True
    if session.layers and _calibratable_text(config):
        fits = bool(stream_writers(session) or postnorm_sites(session))
        return "angular", "block", fits
    return "magnitude", "fine", False


def resolve_defaults(config: PruneConfig, session, *, checkpoints: bool = False, scores=None) -> PruneConfig:
    """CONFIG with every `auto` option replaced by its value for SESSION's (unpruned) model. CHECKPOINTS:
    the prune materialises smaller ratios on the way, which compensation does not support yet (auto -> none).
    SCORES: a given score table (`--scores`), whose rows decide the granularity (whole layers or units)."""
    if AUTO not in (config.importance, config.granularity, config.compensate):
        return config
    from .compensate.images import is_image_model

    importance, granularity, fits = _model_defaults(config, session)
    if scores is not None and config.granularity == AUTO and not is_image_model(session):
        granularity = "block" if any(u.endswith(".block") for u in scores.units) else "fine"
    if config.importance != AUTO:
        importance = config.importance
        granularity = "fine"  # whole layers only with the importance they were measured with (auto)
    if config.granularity != AUTO:
        granularity = config.granularity
    compensate = config.compensate
    if compensate == AUTO:
        # Image models refit their Convs on images; a text model's fits need held-out windows.
        usable = fits and (is_image_model(session) or _has_held_out(config))
        compensate = "lstsq" if usable and not checkpoints else "none"
    requested = {"importance": config.importance, "granularity": config.granularity, "compensate": config.compensate}
    return dataclasses.replace(config, importance=importance, granularity=granularity, compensate=compensate,
                               requested=requested)
