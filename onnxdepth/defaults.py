"""What `auto` options mean for one model: the defaults a plain `prune` gets, resolved once per prune.

`PruneConfig` leaves importance, granularity and compensation at `auto`. With calibration data given
(`--calib`) on a pre-norm transformer (Llama-style residual stream), the measured best mode that runs in
minutes is used (docs/results.md, reconstruction): whole layers, Gromov et al.'s contiguous run chosen by
the angular damage left after a least-squares fit, and that fit folded into the writer before the run.
Post-norm encoders (BERT) get whole layers too, with their projections and LayerNorms refitted
(`compensate.postnorm`: MiniLM at 0.2 keeps cosine 0.80 against 0.36).
With calibration images on a CNN (or a one-image-input model such as PP-OCR rec), the surviving Convs
are refitted (`compensate.chain`: fidelity mAP50 of YOLOv8n at 0.2, 0.47 -> 0.96). Without calibration
data the data-free defaults stay (magnitude importance, fine granularity, no compensation). The plan
records the resolved values, never `auto`.
"""

from __future__ import annotations

import dataclasses
import logging

from .config import AUTO, PruneConfig
from .errors import InvalidArgumentError

__all__ = ["resolve_defaults"]

logger = logging.getLogger(__name__)


def _has_held_out(config: PruneConfig) -> bool:
    """True if the calibration text leaves windows for the fits' held-out check; auto skips the fits (with a
    warning) on a file too short for them, where an explicit --compensate lstsq is refused."""
    try:
        return len(config.calibration.held_out_tokens("--compensate auto")) > 0
    except InvalidArgumentError as exc:
        logger.warning("no least-squares compensation: %s", exc)
        return False


def resolve_defaults(config: PruneConfig, session, *, checkpoints: bool = False) -> PruneConfig:
    """CONFIG with every `auto` option replaced by its value for SESSION's (unpruned) model. CHECKPOINTS:
    the prune materialises smaller ratios on the way, which compensation does not support yet (auto -> none)."""
    if AUTO not in (config.importance, config.granularity, config.compensate):
        return config
    from .compensate import postnorm_sites, stream_writers
    from .compensate.images import is_image_model

    calibrated = config.calibration.source is not None
    # A residual stream the fits apply to: pre-norm (Llama) or post-norm (BERT), not an image model's.
    prenorm = bool(session.layers) and not is_image_model(session) and \
        bool(stream_writers(session) or postnorm_sites(session))
    best_mode = calibrated and prenorm  # the compensated whole-layer mode applies
    chains = calibrated and is_image_model(session)  # Conv refits apply (CNNs, PP-OCR rec)
    importance = config.importance
    granularity = config.granularity
    if importance == AUTO:
        importance = "angular" if best_mode else "magnitude"
    if granularity == AUTO:
        # Whole layers only with the mode they were measured in: auto importance resolved to angular.
        granularity = "block" if best_mode and config.importance == AUTO else "fine"
    compensate = config.compensate
    if compensate == AUTO:
        compensate = "lstsq" if (best_mode and _has_held_out(config) or chains) and not checkpoints else "none"
    requested = {"importance": config.importance, "granularity": config.granularity, "compensate": config.compensate}
    return dataclasses.replace(config, importance=importance, granularity=granularity, compensate=compensate,
                               requested=requested)
