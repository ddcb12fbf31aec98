"""Block-local importance with one job per cut-out layer, run on a `distributed.RayPool` (`--workers`).

Each job carries what the single-process loop uses for one layer: the cut-out sub-model (external weights
inlined, so any worker can run it), its input shapes, the unit kinds to prune in it and its boundary names;
the boundary arrays and feeds travel through Ray's object store. Angular importance needs nothing else.
Cross-entropy needs the layers after the scored one too: it runs as a pipeline of stages (`chain_stages`).
The least-squares compensated damages of block runs (`compensate.runs`) are one job per
first layer of a run, on the stream values of one model run shared through the object store. The worker does
exactly what the single-process loop does, so the scores are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.extract import extract_submodel
from .angular import (LayerCache, _pruned_layer_distance, _sub_shapes, cache_layers, layer_boundaries,
                      pruned_layer_outputs)

__all__ = ["LayerJob", "pooled_angular_scores", "pooled_fitted_run_table", "score_layer_job"]


@dataclass
class LayerJob:
    """One cut-out layer to score: its sub-model, granularity and shapes, the unit kinds, and its boundaries."""

    sub: bytes
    granularity: str
    shapes: dict
    kinds: list[str]
    start: str
    end: str
    index: int = 0  # the layer's position (cross-entropy runs the layers after it)
    boundaries: tuple = ()  # every layer's (input, output) names (cross-entropy)


def score_layer_job(job: LayerJob, start_hidden: list, end_hidden: list, feeds: list,
                    threads: int | None) -> dict[str, float]:
    """Kind -> angular distance of JOB's layer with that unit pruned (runs in a Ray worker)."""
    from ..prune.session import PruneSession

    sub = onnx.load_from_string(job.sub)
    base = PruneSession(sub, granularity=job.granularity, input_shapes=job.shapes, detect_head=False)
    cache = LayerCache([(job.start, job.end)], {job.start: start_hidden, job.end: end_hidden}, feeds)
    scores = {}
    for kind in job.kinds:
        local = base.fork()
        local.apply(local.plan(f"layer0.{kind}"))
        scores[kind] = _pruned_layer_distance(local, sub, cache, job.start, job.end, threads)
    return scores


def shippable(sub: onnx.ModelProto) -> bytes:
    """SUB serialized with any external weights it refers to read in (one layer's worth)."""
    from ..graph.external import folder_of, unmark

    folder = folder_of(sub)
    if folder is not None:
        copy = onnx.ModelProto()
        copy.CopyFrom(sub)
        onnx.load_external_data_for_model(copy, folder)
        unmark(copy)
        sub = copy
    return sub.SerializeToString()


def pooled_angular_scores(model: onnx.ModelProto, session, tokens: np.ndarray, pool, *,
                          threads: int | None = None) -> dict[str, float]:
    """`angular.angular_scores` of SESSION's units (fine or sublayer granularity), one Ray job per layer."""
    cache = cache_layers(model, layer_boundaries(session), tokens, threads=threads)
    unit_ids = session.structural_ids()
    jobs = []
    for index, (start, end) in enumerate(cache.boundaries):
        prefix = f"layer{index}."
        kinds = [u[len(prefix):] for u in unit_ids if u.startswith(prefix)]
        if kinds:
            sub = extract_submodel(model, [start], [end])
            jobs.append((prefix, LayerJob(shippable(sub), session.granularity, _sub_shapes(sub, cache, start), kinds,
                                          start, end)))
    results = pool.score_layers(score_layer_job, [job for _, job in jobs], cache.hidden, cache.feeds, threads)
    return {prefix + kind: score for (prefix, _), result in zip(jobs, results) for kind, score in result.items()}


def pooled_fitted_run_table(model: onnx.ModelProto, writers: list, tokens: np.ndarray, held_out: np.ndarray,
                            pool) -> list[list[float]]:
    """`compensate.runs.fitted_run_table`, one Ray job per first layer of a run (its fits and damages)."""
    from ..compensate.runs import stream_values

    values = stream_values(model, writers, tokens, held_out)
    return pool.map(fitted_run_row_job, list(range(values.layers)), shared=(values,))


def fitted_run_row_job(first: int, values) -> list[float]:
    """Row FIRST of the fitted run table (in a Ray worker)."""
    from ..compensate.runs import fitted_run_row

    return fitted_run_row(values, first)
