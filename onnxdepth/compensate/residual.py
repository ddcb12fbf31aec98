"""Least-squares compensation of removed residual writers (ReplaceMe, arXiv 2505.02819, on the ONNX graph).

After a run of writers is removed, the stream after it is whatever the nearest surviving writer before
it left: s + x, where x is that writer's output. A linear map T fitted by ridge least squares so that
s + x T reproduces the unpruned stream after the run is folded into that writer's weights (W <- W T),
so the pruned model gains no node and no parameter. Runs are fitted in stream order on the pruned
model as it stands (each fit sees the folds before it). A fit that does not lower the error on
held-out calibration windows is not folded, and the record says so.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..graph.extract import extract_submodel, with_extra_outputs
from .fold import fold_output_map
from .lstsq import NormalEquations, relative_weights, weighted_squared_error

from .stream import Run, Writer, removed_runs

__all__ = ["fit_removed_runs", "run_outputs"]

logger = logging.getLogger(__name__)

#: Calibration sequences per ONNX Runtime run (8 x 128 tokens: the layer cache's batch size).
BATCH_SEQUENCES = 8


def run_outputs(model: onnx.ModelProto, names: list[str], tokens: np.ndarray, *,
                threads: int | None = None) -> dict[str, list[np.ndarray]]:
    """The float tensors NAMES of MODEL on TOKENS [n, length], one array per batch of BATCH_SEQUENCES rows;
    only the part of the graph that computes them is run."""
    from ..importance.angular import model_feeds
    from ..runtime import open_session

    prefix = extract_submodel(with_extra_outputs(model, names), [], names)
    session = open_session(prefix, threads=threads)
    inputs = {i.name: i for i in session.get_inputs()}
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(tokens), BATCH_SEQUENCES):
        outputs = session.run(names, model_feeds(inputs, tokens[start:start + BATCH_SEQUENCES]))
        for name, value in zip(names, outputs):
            values[name].append(value)
    return values


def _fit(run: Run, pruned: dict, target: list[np.ndarray]) -> NormalEquations:
    """Normal equations of (x T ~ target - s) over the calibration batches."""
    fold = run.fold
    equations = NormalEquations()
    for x, s, y in zip(pruned[fold.output], pruned[fold.stream_in], target):
        equations.add(x, y - s, relative_weights(y))  # each token's error relative to its stream's norm
    return equations


def _held_out_errors(run: Run, held: dict, target: list[np.ndarray], transform: np.ndarray) -> tuple[float, float]:
    """Mean per-token relative squared error |e|^2 / |y|^2 of the stream after RUN on held-out windows (the
    fit's own objective), without and with the fit."""
    fold = run.fold
    before = after = rows = 0.0
    for x, s, y in zip(held[fold.output], held[fold.stream_in], target):
        weights = relative_weights(y)  # 1 / |y|^2 per token
        before += weighted_squared_error(s + x, y, weights)
        after += weighted_squared_error(s + x.astype(np.float64) @ transform, y, weights)
        rows += len(weights)
    return before / max(rows, 1), after / max(rows, 1)


def _untouched_before(fold: Writer, pruned: list[str]) -> bool:
    """True if no unit pruned so far changes what FOLD computes: all are in later layers (or, for an
    attention writer, in its own layer's MLP). Units outside the layers count as changes."""
    layer = int(fold.unit.split(".")[0].removeprefix("layer"))
    for unit in pruned:
        prefix, _, kind = unit.partition(".")
        if not prefix.startswith("layer") or not prefix[5:].isdigit():
            return False
        other = int(prefix[5:])
        if other < layer or (other == layer and (fold.unit.endswith(".mlp") or kind == "attention")):
            return False
    return True


def fit_removed_runs(model: onnx.ModelProto, session, writers: list[Writer], tokens: np.ndarray,
                     held_out: np.ndarray) -> list[dict]:
    """Fit and fold one map per run of removed writers of SESSION (pruned from MODEL), in stream order.

    WRITERS: `stream_writers` of the unpruned session. TOKENS / HELD_OUT: calibration and held-out
    windows. Returns one record per run (what was fitted, the held-out errors, whether it was folded).
    """
    runs = removed_runs(session, writers)
    if not runs:
        return []
    # A fold writer nothing was pruned before computes what it did in the unpruned model: its inputs come
    # from the same pass as the targets (the unpruned streams after each run), and the pruned model need not
    # run for it.
    clean = [run for run in runs if run.fold is not None and _untouched_before(run.fold, session.pruned)]
    names = sorted({run.target for run in runs} | {n for run in clean for n in (run.fold.output, run.fold.stream_in)})
    unpruned = run_outputs(model, names, np.concatenate([tokens, held_out]))
    split = -(-len(tokens) // BATCH_SEQUENCES)  # batches of calibration windows come first
    records = []
    for run in runs:
        record = {"removed": [w.unit for w in run.removed], "target": run.target,
                  "writer": run.fold.node if run.fold else None, "folded": False}
        records.append(record)
        if run.fold is None:
            record["reason"] = "no surviving writer before the run"
            continue
        names = [run.fold.output, run.fold.stream_in]
        if run in clean:
            calib = {name: unpruned[name][:split] for name in names}
            held = {name: unpruned[name][split:] for name in names}
        else:
            pruned = session.to_model(model, keep=set(names))
            calib, held = run_outputs(pruned, names, tokens), run_outputs(pruned, names, held_out)
        equations = _fit(run, calib, unpruned[run.target][:split])
        transform = equations.solve(prior=np.eye(len(equations.gram)))  # ridge towards "no fit"
        before, after = _held_out_errors(run, held, unpruned[run.target][split:], transform)
        record["held_out_error"] = {"before": round(before, 6), "after": round(after, 6)}
        if after >= before:
            record["reason"] = "the fit does not lower the held-out error"
            logger.info("not folding %s: held-out error %.4f -> %.4f", run.fold.node, before, after)
            continue
        tensors = session.graph.tensors()
        node = next(n for n in session.graph.nodes if n.name == run.fold.node)
        fold_output_map(node, tensors[run.fold.output], transform)
        session._invalidate()
        record["folded"] = True
        logger.info("folded a fit into %s for %s: held-out error %.4f -> %.4f", run.fold.node,
                    ", ".join(record["removed"]), before, after)
    return records
