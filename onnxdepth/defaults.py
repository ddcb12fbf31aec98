"""What `auto` options mean for one model: the defaults a plain `prune` gets, resolved once per prune.

`PruneConfig` leaves importance, granularity and compensation at `auto`. With calibration data given
(`--calib`) on a pre-norm transformer (Llama-style residual stream), the measured best mode that runs in
minutes is used (docs/results.md, reconstruction): whole layers, Gromov et al.'s contiguous run chosen by
the angular damage left after a least-squares fit, and that fit folded into the writer before the run.
With calibration images on a CNN (or a one-image-input model such as PP-OCR rec), the surviving Convs
are refitted (`compensate.chain`: fidelity mAP50 of YOLOv8n at 0.2, 0.47 -> 0.96). Without calibration
data the data-free defaults stay (magnitude importance, fine granularity, no compensation). The plan
records the resolved values, never `auto`.
"""

from __future__ import annotations

import dataclasses

from .config import AUTO, PruneConfig

__all__ = ["resolve_defaults"]


def resolve_defaults(config: PruneConfig, session, *, checkpoints: bool = False) -> PruneConfig:
    """CONFIG with every `auto` option replaced by its value for SESSION's (unpruned) model. CHECKPOINTS:
    the prune materialises smaller ratios on the way, which compensation does not support yet (auto -> none)."""
    if AUTO not in (config.importance, config.granularity, config.compensate):
        return config
    from .compensate import stream_writers
    from .compensate.images import is_image_model

    calibrated = config.calibration.source is not None
    prenorm = bool(session.layers) and bool(stream_writers(session))
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
        compensate = "lstsq" if (best_mode or chains) and not checkpoints else "none"
    return dataclasses.replace(config, importance=importance, granularity=granularity, compensate=compensate)
