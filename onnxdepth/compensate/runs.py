"""Which run of whole layers to remove once it can be compensated: the damage left after the fit.

Gromov et al. remove the contiguous layers whose input and output are most alike. With a least-squares
fold after the run (`residual`), what counts is how far the *compensated* stream is from the unpruned
one: for the run of layers l .. l + n - 1, the MLP writer of layer l - 1 is refitted so that
s + x T ~ S[l + n], and the run's damage is the mean angular distance of s + x T to S[l + n] on held-out
windows (S[k]: the stream entering layer k; x, s: that writer's output and the stream it adds to).
All of it comes from one run of the unpruned model.
"""

from __future__ import annotations

import numpy as np
import onnx

import os

from .lstsq import relative_weights, ridge_solve

_WEIGHTED = os.environ.get("ONNXDEPTH_FIT_WEIGHT", "relative") == "relative"  # prototype toggle
_PRIOR = os.environ.get("ONNXDEPTH_FIT_PRIOR", "zero") == "identity"  # prototype toggle
from .residual import run_outputs
from .stream import Writer

__all__ = ["fitted_run_table"]


def _stacked(values: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Each tensor's batches as one [tokens, width] array, kept in its own float32 (half the memory of
    float64) and joined once: every run reads them again."""
    return {name: np.concatenate([v.reshape(-1, v.shape[-1]) for v in batches]) for name, batches in values.items()}


def fitted_run_table(model: onnx.ModelProto, writers: list[Writer], tokens: np.ndarray,
                     held_out: np.ndarray) -> list[list[float]]:
    """TABLE[l][n]: held-out angular damage of removing layers l .. l + n - 1 with the fold (TABLE[l][0] = 0).

    Runs from layer 0 have no writer before them: their damage is the plain angular distance of the
    stream before and after the run. WRITERS: two per layer (attention, MLP), in stream order.
    """
    from ..importance.angular import angular_distance

    layers = len(writers) // 2
    # streams[k]: the stream entering layer k (k = layers: after the last layer).
    streams = [writers[2 * k].stream_in for k in range(layers)] + [writers[-1].stream_out]
    mlp = [writers[2 * k + 1] for k in range(layers)]
    names = sorted(set(streams) | {w.output for w in mlp} | {w.stream_in for w in mlp})
    calib, held = _stacked(run_outputs(model, names, tokens)), _stacked(run_outputs(model, names, held_out))
    table = []
    for first in range(layers):
        row = [0.0]
        for n in range(1, layers - first + 1):
            target_h = held[streams[first + n]]
            if first == 0:
                row.append(float(angular_distance(held[streams[0]], target_h).mean()))
                continue
            if n == 1:
                writer = mlp[first - 1]  # the MLP of the layer before the run carries the fold
                x, s = calib[writer.output].astype(np.float64), calib[writer.stream_in].astype(np.float64)
                x_h, s_h = held[writer.output].astype(np.float64), held[writer.stream_in].astype(np.float64)
                gram = x.T @ x  # once per start; X^T Y per run below
                eye = np.eye(len(gram)) if _PRIOR else None
            target = calib[streams[first + n]].astype(np.float64)
            if _WEIGHTED:
                xw = x * relative_weights(target)[:, None]  # rows weighted by 1 / |target row|^2
                transform = ridge_solve(xw.T @ x, xw.T @ (target - s), prior=eye)
            else:
                transform = ridge_solve(gram, x.T @ (target - s), prior=eye)
            prediction = s_h + x_h @ transform
            row.append(float(angular_distance(prediction, target_h).mean()))
        table.append(row)
    return table
