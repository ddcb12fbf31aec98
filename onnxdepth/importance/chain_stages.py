"""Cross-entropy importance on Ray as a pipeline: each worker holds one contiguous run of layers, never the model.

Cross-entropy scores a unit of layer l by running its pruned layer on the cached input of l, then the unpruned
layers l+1 .. L-1 and the head (`cross_entropy`). Every score needs the layers after it, so sharding by the
scored layer alone would give every worker nearly the whole model. Here the layers are cut into as many
contiguous stages as the cluster has CPUs; stage s is a Ray actor (`ChainStage`) holding only its layers'
sub-model (the last stage also the head and the reference distribution). A job for layer l goes to the stage
holding l, which prunes and runs it and its own later layers; the hidden states then flow through the later
stages (their object refs chained, so Ray runs the stages concurrently, one job behind another), and the last
one returns the mean CE. Each stage runs the same cut-out layer sessions as the single-process chain, in the
same order, so the scores are identical.

Memory per worker: its stage's weights (about 1/N of the layers), its layer sessions, and the hidden states
of the jobs in flight; the last stage adds the head and the float16 reference (tokens x vocabulary x 2 B).
A stage's sub-model travels as one serialized proto, so a stage must be under protobuf's 2 GB: more
workers for bigger models.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph.extract import extract_submodel
from .angular import LayerCache, _sub_shapes, cache_layers, layer_boundaries, pruned_layer_outputs
from .layer_jobs import LayerJob, shippable

__all__ = ["ChainStage", "pipelined_cross_entropy_scores", "stage_ranges"]


def stage_ranges(layers: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous [first, last) layer ranges of near-equal length, one per stage (at most one stage per layer)."""
    stages = max(1, min(stages, layers))
    # Stage s covers layers [s*L//S, (s+1)*L//S): lengths differ by at most one.
    return [(s * layers // stages, (s + 1) * layers // stages) for s in range(stages)]


class ChainStage:
    """Layers [FIRST, LAST) of the chain as ONNX Runtime sessions (built on first use), in a Ray actor; the last
    stage (REFERENCE given) ends every run with the head's per-token CE against the reference."""

    def __init__(self, stage_bytes: bytes, boundaries: tuple, first: int, last: int, logits: str, feeds: list,
                 reference: list | None, threads: int | None):
        from .cross_entropy import _Chain

        self.first, self.last, self.threads = first, last, threads
        self.feeds, self.reference = feeds, reference
        self.chain = _Chain(onnx.load_from_string(stage_bytes), LayerCache(list(boundaries), {}, feeds),
                            boundaries[-1][1], logits, threads)

    def close(self) -> None:
        """Remove the stage's scratch copy of its shared weights (a Ray worker may end without running
        finalizers)."""
        self.chain.shared.close()

    def memory(self) -> dict[str, int]:
        """This worker process's memory in bytes (for `tools/ray_stages.py`): peak RSS, and now its USS (pages
        only it holds) and PSS (shared pages split among their users). RSS counts every mapping of the shared
        weights file (`shared_weights`) again, so USS / PSS are what the stage costs."""
        import resource

        import psutil

        full = psutil.Process().memory_full_info()
        # ru_maxrss: KiB on Linux.
        return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "uss": full.uss, "pss": full.pss}

    def score(self, job: LayerJob, start_hidden: list, end_hidden: list):
        """JOB's layer (in this stage) with each of its unit kinds pruned, run on through this stage's later
        layers: kind -> per-batch hidden states (to the next stage), or kind -> mean CE on the last stage."""
        if job.kinds == ["block"]:  # a pruned layer is the identity: its input goes on to the next layer
            return self.forward({"block": list(start_hidden)}, job.index)
        from ..prune.session import PruneSession

        sub = onnx.load_from_string(job.sub)
        base = PruneSession(sub, granularity=job.granularity, input_shapes=job.shapes, detect_head=False)
        cache = LayerCache([(job.start, job.end)], {job.start: start_hidden, job.end: end_hidden}, self.feeds)
        outputs = {}
        for kind in job.kinds:
            local = base.fork()
            local.apply(local.plan(f"layer0.{kind}"))
            outputs[kind] = pruned_layer_outputs(local, sub, cache, job.start, job.end, self.threads)
        return self.forward(outputs, job.index)

    def forward(self, outputs: dict[str, list], after: int):
        """OUTPUTS (kind -> per-batch outputs of layer AFTER) through this stage's layers after AFTER; the last
        stage then takes the head's CE, summed as `cross_entropy._mean_ce` sums it."""
        result = {}
        for kind, hiddens in outputs.items():
            total, count, carried = 0.0, 0, []
            for batch, hidden in enumerate(hiddens):
                for index in range(max(after + 1, self.first), self.last):
                    hidden = self.chain.layer(index, hidden, batch)
                if self.reference is None:
                    carried.append(hidden)
                    continue
                ce = self.chain.head_ce(hidden, batch, self.reference[batch])
                total += float(ce.sum(dtype=np.float64))
                count += ce.size
            result[kind] = carried if self.reference is None else total / max(count, 1)
        return result


def pipelined_cross_entropy_scores(model: onnx.ModelProto, session, tokens: np.ndarray, pool, *,
                                   threads: int | None = None) -> dict[str, float]:
    """`cross_entropy.cross_entropy_scores` of SESSION's units on POOL, the layers split into one stage per CPU."""
    from .cross_entropy import _Chain, _logits_name, _reference_probs

    boundaries = layer_boundaries(session)
    logits = _logits_name(model)
    cache = cache_layers(model, boundaries, tokens, threads=threads)
    reference = _reference_probs(_Chain(model, cache, boundaries[-1][1], logits, threads))
    ranges = stage_ranges(len(boundaries), pool.cpus())
    feeds = pool.put(cache.feeds)
    stages = []
    for number, (first, last) in enumerate(ranges):
        final = number == len(ranges) - 1
        # A stage's sub-model: from its first layer's input to its last layer's output (the logits: the head).
        sub = extract_submodel(model, [boundaries[first][0]], [logits if final else boundaries[last - 1][1]])
        stages.append(pool.actor(ChainStage, shippable(sub), tuple(boundaries), first, last, logits, feeds,
                                 pool.put(reference) if final else None, threads))
        del sub
    stage_of = {index: number for number, (first, last) in enumerate(ranges) for index in range(first, last)}
    hidden = {name: pool.put(values) for name, values in cache.hidden.items()}
    unit_ids = session.structural_ids()
    pending = []
    for index, (start, end) in enumerate(boundaries):
        prefix = f"layer{index}."
        kinds = [u[len(prefix):] for u in unit_ids if u.startswith(prefix)]
        if not kinds:
            continue
        sub = b"" if kinds == ["block"] else shippable(extract_submodel(model, [start], [end]))
        shapes = {} if kinds == ["block"] else _sub_shapes(extract_submodel(model, [start], [end]), cache, start)
        job = LayerJob(sub, session.granularity, shapes, kinds, start, end, index, tuple(boundaries))
        ref = stages[stage_of[index]].score.remote(job, hidden[start], hidden[end])
        for later in stages[stage_of[index] + 1:]:  # chained refs: Ray starts each stage once its input is ready
            ref = later.forward.remote(ref, index)
        pending.append((prefix, ref))
    try:
        results = pool.get([ref for _, ref in pending])
    finally:
        pool.get([stage.close.remote() for stage in stages])
    return {prefix + kind: score for (prefix, _), result in zip(pending, results) for kind, score in result.items()}
