"""Angular importance on the graph outputs: each unit's measured damage when it alone is pruned (CNNs).

A transformer's angular distance is block-local (`angular`): one layer's input against its output. A CNN
has no layer stream to compare, so each prunable unit is scored on what the user sees: Prune(f) of that
unit alone (with the width reconciliation it forces) is applied to a copy of the session, the copy is run by
ONNX Runtime on the calibration images, and its graph outputs are compared with the unpruned model's. The
score is the mean over images and outputs of the angular distance arccos(cos(y, y')) / pi between the two
outputs, flattened per image after each output channel (axis 1) is standardised by the unpruned model's
mean and spread: a detector's box rows (pixels) and class rows (probabilities) then weigh alike.

This needs no gradients (no torch), so it is the data-driven default where Taylor cannot run, and a damage
measured on the model itself rather than a first-order estimate (Taylor's scale differs by orders of
magnitude between a network's stages). One leave-one-out run per unit, on the unpruned model (with the prune's
Conv refits on, each unit's nearest Convs are refitted before it is measured); the iterative selection ranks
by these scores, and `output_search` re-measures them as the model is pruned.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..runtime import open_session
from ..runtime import progress as progress_bar

__all__ = ["OUTPUT_IMAGES", "OutputDistance", "output_damage_scores", "standardised_distance"]

logger = logging.getLogger(__name__)

#: Calibration images each unit's leave-one-out damage is measured on.
OUTPUT_IMAGES = 16


def _channel_stats(reference: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and spread of one output over all images: axis 1 is the channel axis (a detector's
    4 + classes rows, a feature map's channels); every other axis is pooled."""
    stacked = np.concatenate([r.astype(np.float64) for r in reference], axis=0)
    if stacked.ndim < 2:
        return np.zeros(()), np.ones(())
    axes = tuple(a for a in range(stacked.ndim) if a != 1)  # pool batch and positions, keep channels
    mean = stacked.mean(axis=axes, keepdims=True)[0:1]
    spread = stacked.std(axis=axes, keepdims=True)[0:1]
    scale = float(spread.max()) if spread.size else 1.0
    # A constant channel (spread 0) is compared on the output's overall scale instead of dividing by zero.
    spread = np.where(spread > 1e-12 * max(scale, 1e-30), spread, max(scale, 1.0))
    return mean, spread


def standardised_distance(pruned: np.ndarray, reference: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> float:
    """Angular distance / pi between PRUNED and REFERENCE (one image's output), flattened after standardising."""
    a = ((reference.astype(np.float64) - mean) / spread).ravel()
    b = ((pruned.astype(np.float64) - mean) / spread).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0.0:
        return 0.0 if np.array_equal(a, b) else 1.0
    if not np.isfinite(norms):
        return 1.0  # a pruned model that overflows is as far as it gets
    return float(np.arccos(np.clip(a @ b / norms, -1.0, 1.0)) / np.pi)


def _run(model: onnx.ModelProto, feed: str, images: list[np.ndarray], threads: int | None) -> list[list[np.ndarray]]:
    """Every output of MODEL on each image: result[image][output]."""
    session = open_session(model, threads=threads)
    return [session.run(None, {feed: image}) for image in images]


class OutputDistance:
    """The unpruned MODEL's outputs on IMAGES and their per-channel statistics; called with another model, the
    mean standardised angular distance of its outputs to them (over images and outputs)."""

    def __init__(self, model: onnx.ModelProto, feed: str, images: list[np.ndarray], threads: int | None = None):
        self.feed, self.images, self.threads = feed, images, threads
        self.reference = _run(model, feed, images, threads)
        self.stats = [_channel_stats([outputs[k] for outputs in self.reference]) for k in range(len(self.reference[0]))]

    def __call__(self, model: onnx.ModelProto) -> float:
        pruned = _run(model, self.feed, self.images, self.threads)
        return float(np.mean([standardised_distance(p[k], r[k], *self.stats[k])
                              for p, r in zip(pruned, self.reference) for k in range(len(r))]))


def output_damage_scores(model: onnx.ModelProto, session, calibration, *, count: int = OUTPUT_IMAGES,
                         refit: bool = False, threads: int | None = None,
                         show_progress: bool = True) -> dict[str, float]:
    """Unit id -> mean standardised angular distance of the graph outputs when that unit alone is pruned,
    for every currently prunable unit of SESSION (which has not pruned anything), on COUNT calibration
    images of MODEL's one image input. REFIT: the damage left once the nearest surviving Convs are refitted
    (`compensate.chain`, scope nearest), as the prune's own refits will do after selection: a unit whose
    loss a refit repairs then ranks as cheap as it will be."""
    from ..compensate import chain
    from ..compensate.images import image_inputs

    images, checks = image_inputs(model, session, calibration, count=count, held_out=count // 2 if refit else 0)
    distance = OutputDistance(model, next(iter(session.input_shapes)), images, threads)
    plans = session.prunable_plans()
    scores: dict[str, float] = {}
    with progress_bar(len(plans), "angular (outputs)", show_progress) as bar:
        for plan in plans:
            copy = session.fork()
            copy.apply(copy.plan(plan.unit_id))
            if refit:
                chain.fit_consumer_chains(model, copy, images, checks, scope="nearest")
            scores[plan.unit_id] = distance(copy.to_model(model))
            bar.advance()
    logger.info("angular on graph outputs: %d units measured on %d images", len(scores), len(images))
    return scores
