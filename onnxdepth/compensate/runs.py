"""Which run of whole layers to remove once it can be compensated: the damage left after the fit.

Gromov et al. remove the contiguous layers whose input and output are most alike. With a least-squares
fold after the run (`residual`), what counts is how far the *compensated* model is from the unpruned
one. For the run of layers l .. l + n - 1, the MLP writer of layer l - 1 is refitted so that
s + x T ~ S[l + n] (S[k]: the stream entering layer k; x, s: that writer's output and the stream it adds
to). Two measures of what is left, both on held-out windows:

- `fitted_run_table`: the mean angular distance of s + x T to S[l + n], for every run (block-local; all of
  it from one run of the unpruned model);
- `choose_fitted_run`: for the few best runs of the asked length by that table, the next-token negative
  log-likelihood of the held-out text when the rest of the model reads s + x T (a run of the layers after
  the run and the head): what the user measures, at the cost of one partial forward pass per candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from .lstsq import relative_weights, ridge_solve, weighted_squared_error
from .residual import BATCH_SEQUENCES, run_outputs
from .stream import Writer

__all__ = ["StreamValues", "choose_fitted_run", "fitted_run_table", "stream_values"]

logger = logging.getLogger(__name__)

#: Runs whose held-out likelihood `choose_fitted_run` measures (the best by the angular table).
CANDIDATES = 4
#: Windows the candidates' next-token NLL is measured on: "held" (held-out only) or "all".
NLL_WINDOWS = "held"


@dataclass
class StreamValues:
    """The unpruned layer-boundary streams and each layer's MLP write, on calibration and held-out windows."""

    streams: list[str]  # streams[k]: the stream entering layer k (k = layers: after the last layer)
    mlp: list[Writer]  # mlp[k]: the MLP writer of layer k
    calib: dict[str, np.ndarray]  # tensor name -> [tokens, width] (float32)
    held: dict[str, np.ndarray]

    @property
    def layers(self) -> int:
        return len(self.mlp)


def _stacked(values: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Each tensor's batches as one [tokens, width] array, kept in its own float32 (half the memory of
    float64) and joined once: every run reads them again."""
    return {name: np.concatenate([v.reshape(-1, v.shape[-1]) for v in batches]) for name, batches in values.items()}


def stream_values(model: onnx.ModelProto, writers: list[Writer], tokens: np.ndarray,
                  held_out: np.ndarray) -> StreamValues:
    """One run of MODEL on TOKENS and HELD_OUT for everything the run fits read. WRITERS: two per layer
    (attention, MLP), in stream order."""
    layers = len(writers) // 2
    streams = [writers[2 * k].stream_in for k in range(layers)] + [writers[-1].stream_out]
    mlp = [writers[2 * k + 1] for k in range(layers)]
    names = sorted(set(streams) | {w.output for w in mlp} | {w.stream_in for w in mlp})
    return StreamValues(streams, mlp, _stacked(run_outputs(model, names, tokens)),
                        _stacked(run_outputs(model, names, held_out)))


def _fitted_transform(values: StreamValues, first: int, n: int) -> np.ndarray | None:
    """T of the fold for removing layers FIRST .. FIRST + N - 1, fitted on calibration windows (rows weighted by
    1 / |target|^2, ridge towards the identity); None where no fit is folded: a run from layer 0 (no writer
    before it) or a fit that, as `residual` checks, does not lower the held-out per-token relative error."""
    if first == 0:
        return None
    writer = values.mlp[first - 1]  # the MLP of the layer before the run carries the fold
    x, s = values.calib[writer.output].astype(np.float64), values.calib[writer.stream_in].astype(np.float64)
    target = values.calib[values.streams[first + n]].astype(np.float64)
    xw = x * relative_weights(target)[:, None]  # rows weighted by 1 / |target row|^2
    transform = ridge_solve(xw.T @ x, xw.T @ (target - s), prior=np.eye(x.shape[1]))
    held_x, held_s = values.held[writer.output].astype(np.float64), values.held[writer.stream_in].astype(np.float64)
    held_target = values.held[values.streams[first + n]]
    weights = relative_weights(held_target)
    errors = [weighted_squared_error(p, held_target, weights) for p in (held_s + held_x @ transform, held_s + held_x)]
    return transform if errors[0] < errors[1] else None


def _fitted_stream(values: StreamValues, first: int, n: int, transform: np.ndarray | None,
                   split: str = "held") -> np.ndarray:
    """The stream after removing layers FIRST .. FIRST + N - 1 on the SPLIT windows ("held" or "calib"): s + x T
    with the fold, s + x without it, the stream before the run when it starts at layer 0."""
    rows = values.held if split == "held" else values.calib
    if first == 0:
        return rows[values.streams[0]].astype(np.float64)
    writer = values.mlp[first - 1]
    x, s = rows[writer.output].astype(np.float64), rows[writer.stream_in].astype(np.float64)
    return s + (x if transform is None else x @ transform)


def fitted_run_table(model: onnx.ModelProto, writers: list[Writer], tokens: np.ndarray, held_out: np.ndarray,
                     values: StreamValues | None = None) -> list[list[float]]:
    """TABLE[l][n]: held-out angular damage of removing layers l .. l + n - 1 with the fold (TABLE[l][0] = 0)."""
    values = values or stream_values(model, writers, tokens, held_out)
    return [fitted_run_row(values, first) for first in range(values.layers)]


def fitted_run_row(values: StreamValues, first: int) -> list[float]:
    """Row FIRST of `fitted_run_table` (one Ray job under --workers: `importance.layer_jobs`)."""
    from ..importance.angular import angular_distance

    row = [0.0]
    for n in range(1, values.layers - first + 1):
        prediction = _fitted_stream(values, first, n, _fitted_transform(values, first, n))
        row.append(float(angular_distance(prediction, values.held[values.streams[first + n]]).mean()))
    return row


def _held_out_nll(model: onnx.ModelProto, stream: str, prediction: np.ndarray, held_out: np.ndarray) -> float:
    """Mean next-token negative log-likelihood of HELD_OUT [rows, length] when the model from STREAM on reads
    PREDICTION [rows * length, width] instead of its own stream."""
    from ..eval.perplexity import _nll_sum
    from ..graph.extract import extract_submodel
    from ..importance.angular import model_feeds
    from ..runtime import open_session

    logits_name = next((o.name for o in model.graph.output if o.name == "logits"), model.graph.output[0].name)
    session = open_session(extract_submodel(model, [stream], [logits_name]))
    inputs = {i.name: i for i in session.get_inputs()}
    rows, length = held_out.shape
    hidden = prediction.astype(np.float32).reshape(rows, length, -1)  # back to [batch, sequence, width]
    total, count = 0.0, 0
    for start in range(0, rows, BATCH_SEQUENCES):
        batch = held_out[start:start + BATCH_SEQUENCES]
        feeds = {**model_feeds(inputs, batch), stream: hidden[start:start + BATCH_SEQUENCES]}
        logits = session.run([logits_name], feeds)[0][:, :-1]  # position t predicts token t + 1
        targets = batch[:, 1:]
        total += _nll_sum(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        count += targets.size
    return total / max(count, 1)


def choose_fitted_run(model: onnx.ModelProto, writers: list[Writer], tokens: np.ndarray, held_out: np.ndarray,
                      n_layers: int, candidates: int = CANDIDATES) -> tuple[int, list[dict]]:
    """The first layer of the run of N_LAYERS layers whose compensated model predicts the held-out text best,
    among the CANDIDATES best by the angular table; and every candidate's record (first, angular, nll)."""
    from ..importance.angular import angular_distance

    values = stream_values(model, writers, tokens, held_out)
    starts = range(values.layers - n_layers + 1)
    transforms = {first: _fitted_transform(values, first, n_layers) for first in starts}
    angular = {first: float(angular_distance(_fitted_stream(values, first, n_layers, t),
                                             values.held[values.streams[first + n_layers]]).mean())
               for first, t in transforms.items()}
    shortlist = sorted(starts, key=lambda first: (angular[first], first))[:candidates]
    # The likelihood is measured on NLL_WINDOWS: the held-out windows alone, or all windows (the fit saw the
    # calibration streams but never the text's next tokens; 5x the tokens make the choice less noisy).
    windows = np.concatenate([tokens, held_out]) if NLL_WINDOWS == "all" else held_out
    records = []
    for first in shortlist:
        stream = _fitted_stream(values, first, n_layers, transforms[first])
        if NLL_WINDOWS == "all":
            stream = np.concatenate([_fitted_stream(values, first, n_layers, transforms[first], "calib"), stream])
        nll = _held_out_nll(model, values.streams[first + n_layers], stream, windows)
        records.append({"first": first, "last": first + n_layers - 1, "angular": round(angular[first], 6),
                        "nll": round(nll, 6), "folded": transforms[first] is not None})
        logger.info("layers %d-%d with the fit: angular %.4f, NLL %.4f", first, first + n_layers - 1,
                    angular[first], nll)
    best = min(records, key=lambda r: (r["nll"], r["first"]))
    return best["first"], records
