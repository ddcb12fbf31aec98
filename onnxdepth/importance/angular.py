"""Angular-distance importance (Eq. 3.11), computed block-locally through ONNX Runtime.

One run of the whole model caches every transformer layer's input and output on the calibration set.
Each unit is then scored by cutting its own layer out of the graph (`extract_submodel`), applying
Prune(f) to that small sub-model, running it on the cached layer input and comparing with the cached
layer output: mean over tokens of arccos(cos(y, y')) / pi. A whole layer (block granularity) needs no
run at all: pruned, it is the identity, so its score is the distance between its input and output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UnsupportedModelError
from ..graph.extract import extract_submodel, with_extra_outputs
from ..graph.lift import NodeClass
from ..prune.search import find_coupled_ops
from ..runtime import open_session
from ..runtime import progress as progress_bar

__all__ = ["LayerCache", "layer_boundaries", "cache_layers", "angular_distance", "angular_scores",
           "model_feeds", "pruned_layer_outputs", "pruned_layer_variants", "MoveScore", "score_moves"]

logger = logging.getLogger(__name__)


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-token arccos(cos(a, b)) / pi over the last axis."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = (a * b).sum(-1)
    # Zero vectors count as identical (distance 0) rather than dividing by zero.
    cos = np.divide(dots, norms, out=np.ones_like(dots), where=norms > 0)
    return np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi


def layer_boundaries(session) -> list[tuple[str, str]]:
    """(input, output) tensor names of every transformer layer, by structure.

    A layer's input is what its attention's coupled input norm reads (or the Q/K/V input when there is
    no pre-norm, as in post-norm BERT); its output is the next layer's input, and for the last layer
    the input of the norm in front of the LM head (or the graph output).
    """
    outputs = {id(t) for t in session.graph.outputs}
    starts = []
    for layer in session.layers:
        block = layer.attention
        norms = [op for op in find_coupled_ops(block.q, {id(block.q), id(block.k), id(block.v)}, session.lifting,
                                               outputs) if op.cls is NodeClass.NORM]
        starts.append((norms[0].input if norms else block.input).name)
    head = [n for n in session.graph.nodes if n.name in session.head_units]
    last = None
    if head:
        data = head[0].inputs[0]
        producer = session.lifting.of_node.get(id(data.inputs[0])) if data.inputs else None
        last = producer.input.name if producer is not None and producer.cls is NodeClass.NORM else data.name
    if last is None:
        last = session.graph.outputs[0].name
    ends = starts[1:] + [last]
    return list(zip(starts, ends))


def model_feeds(model_inputs: dict, tokens: np.ndarray) -> dict:
    """Graph feeds for a token batch: ids, mask, positions, token types, empty KV cache."""
    batch, length = tokens.shape
    feeds = {"input_ids": tokens}
    for name, spec in model_inputs.items():
        if name == "attention_mask":
            feeds[name] = np.ones((batch, length), dtype=np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
        elif name == "token_type_ids":
            feeds[name] = np.zeros((batch, length), dtype=np.int64)
        elif name.startswith("past_key_values"):
            feeds[name] = np.zeros((batch, int(spec.shape[1]), 0, int(spec.shape[3])), dtype=np.float32)
    return {k: v for k, v in feeds.items() if k in model_inputs}


#: Calibration tokens per batch in the layer cache (and so in every run on cached inputs).
BATCH_TOKENS = 1024


@dataclass
class LayerCache:
    boundaries: list[tuple[str, str]]
    hidden: dict[str, list[np.ndarray]]  # tensor name -> one array per calibration batch
    feeds: list[dict]  # graph feeds per batch


def _session(model: onnx.ModelProto, threads: int | None):
    """An ONNX Runtime CPU session of MODEL."""
    return open_session(model, threads=threads)


def cache_layers(model: onnx.ModelProto, boundaries: list[tuple[str, str]], tokens: np.ndarray, *,
                 batch_size: int = 8, threads: int | None = None) -> LayerCache:
    # At most BATCH_TOKENS tokens per batch: every cut-out layer's ONNX Runtime session keeps an arena sized
    # for its largest batch (SmolLM2's cross-entropy chain at 8 x 512 tokens in one batch ran out of 24 GB).
    batch_size = max(1, min(batch_size, BATCH_TOKENS // max(tokens.shape[1], 1)))
    names = sorted({n for pair in boundaries for n in pair})
    session = _session(with_extra_outputs(model, names), threads)
    inputs = {i.name: i for i in session.get_inputs()}
    out_names = [o.name for o in session.get_outputs()]
    hidden: dict[str, list[np.ndarray]] = {n: [] for n in names}
    feeds_per_batch = []
    for start in range(0, len(tokens), batch_size):
        feeds = model_feeds(inputs, tokens[start:start + batch_size])
        values = dict(zip(out_names, session.run(None, feeds)))
        for n in names:
            hidden[n].append(values[n])
        feeds_per_batch.append(feeds)
    return LayerCache(boundaries, hidden, feeds_per_batch)


def angular_scores(model: onnx.ModelProto, session, tokens: np.ndarray, *, batch_size: int = 8,
                   threads: int | None = None, progress: bool = True) -> dict[str, float]:
    """Angular importance of every unit of SESSION (its granularity), block-locally (`layer_jobs`: the same on
    Ray)."""
    if not session.layers:
        raise UnsupportedModelError("angular importance needs a transformer (no attention block found)")
    started = time.perf_counter()
    boundaries = layer_boundaries(session)
    cache = cache_layers(model, boundaries, tokens, batch_size=batch_size, threads=threads)
    unit_ids = [u for u in session.structural_ids()]
    scores: dict[str, float] = {}
    with progress_bar(len(unit_ids), "angular importance", progress) as bar:
        for index, (start, end) in enumerate(boundaries):
            prefix = f"layer{index}."
            kinds = [u[len(prefix):] for u in unit_ids if u.startswith(prefix)]
            if kinds == ["block"]:
                # A pruned layer is the identity: compare its input with its output directly.
                scores[prefix + "block"] = _mean_distance(cache.hidden[start], cache.hidden[end])
                bar.advance(note=prefix + "block")
                continue
            for kind, local, sub in pruned_layer_variants(model, session, cache, index, kinds):
                scores[prefix + kind] = _pruned_layer_distance(local, sub, cache, start, end, threads)
                bar.advance(note=prefix + kind)
    logger.info("angular scores for %d units in %.1f s", len(scores), time.perf_counter() - started)
    return scores


def cut_out_layer(model: onnx.ModelProto, session, cache: LayerCache, index: int):
    """(sub-model, session) of MODEL's layer INDEX alone, between its cached boundaries (block-local scoring)."""
    from ..prune.session import PruneSession

    start, end = cache.boundaries[index]
    sub = extract_submodel(model, [start], [end])
    base = PruneSession(sub, granularity=session.granularity, input_shapes=_sub_shapes(sub, cache, start),
                        detect_head=False)
    if len(base.layers) != 1:
        raise UnsupportedModelError(f"layer {index}: the cut-out layer has {len(base.layers)} attention blocks")
    return sub, base


def pruned_layer_variants(model: onnx.ModelProto, session, cache: LayerCache, index: int, kinds: list[str]):
    """For each of KINDS (unit kinds of layer INDEX): (kind, a cut-out copy of the layer with that unit pruned,
    the cut-out sub-model), the layer cut out once for all of them."""
    sub, base = cut_out_layer(model, session, cache, index)
    for kind in kinds:
        local = base.fork()
        local.apply(local.plan(f"layer0.{kind}"))
        yield kind, local, sub


def _sub_shapes(sub: onnx.ModelProto, cache: LayerCache, start: str) -> dict:
    shapes = {start: tuple(cache.hidden[start][0].shape)}
    for name, value in cache.feeds[0].items():
        if any(v.name == name for v in sub.graph.input):
            shapes[name] = tuple(value.shape)
    return shapes


def _mean_distance(reference: list[np.ndarray], pruned: list[np.ndarray]) -> float:
    total, count = 0.0, 0
    for a, b in zip(reference, pruned):
        d = angular_distance(a, b)
        total += float(d.sum())
        count += d.size
    return total / max(count, 1)


def rescore_fine(model: onnx.ModelProto, boundaries: list[tuple[str, str]], targets: dict[str, tuple[int, str | None]],
                 tokens: np.ndarray, *, batch_size: int = 8, threads: int | None = None,
                 measure=None) -> dict[str, float]:
    """Angular scores of the fine units in TARGETS on MODEL as it is now (partly pruned).

    TARGETS maps an original unit id to (layer index, node name of its transform, or None for the
    attention block). Layers are cut at the original BOUNDARIES (kept alive by `to_model(keep=...)`);
    in a cut-out layer an MLP projection is addressed by its node name, the attention block as the
    only one there. Used by --rescore-every (the thesis's limitation 1).
    """
    moves = {unit_id: (layer, (member,)) for unit_id, (layer, member) in targets.items()}
    scored = score_moves(model, boundaries, moves, tokens, batch_size=batch_size, threads=threads, measure=measure)
    return {move_id: move.score for move_id, move in scored.items()}


@dataclass
class MoveScore:
    score: float  # the measure with the move applied (angular distance, or cross-entropy)
    params_removed: int  # parameters the move removes from its layer (widths it forces included)
    baseline: float = 0.0  # the measure of the current model itself (the damage a move adds is score - baseline)


def score_moves(model: onnx.ModelProto, boundaries: list[tuple[str, str]],
                moves: dict[str, tuple[int, tuple[str | None, ...]]], tokens: np.ndarray, *, batch_size: int = 8,
                threads: int | None = None, measure=None, progress: bool = False) -> dict[str, MoveScore]:
    """Score MOVES on MODEL as it is now (partly pruned): each move prunes several units of one layer.

    MOVES maps a move id to (layer index, members); a member is the node name of an MLP transform, or
    None for the attention block, applied in order on the cut-out layer. A move whose member is gone
    already (or cannot be pruned) is left out of the result. MEASURE as in `rescore_fine` (default:
    block-local angular distance to the current layer's output).
    """
    from ..prune.session import PruneSession

    cache = cache_layers(model, boundaries, tokens, batch_size=batch_size, threads=threads)
    if measure is None:
        def measure(local, sub, start, end, index):
            return _pruned_layer_distance(local, sub, cache, start, end, threads)
    else:
        measure = measure(model, cache)  # a factory: binds the current model and its cache
    baseline = float(getattr(measure, "baseline", 0.0))
    by_layer: dict[int, list[str]] = {}
    for move_id, (layer, _) in moves.items():
        by_layer.setdefault(layer, []).append(move_id)
    scored: dict[str, MoveScore] = {}
    with progress_bar(len(moves), "moves", progress) as bar:
        for index, move_ids in sorted(by_layer.items()):
            start, end = boundaries[index]
            sub = extract_submodel(model, [start], [end])
            base = PruneSession(sub, granularity="fine", input_shapes=_sub_shapes(sub, cache, start),
                                detect_head=False)
            for move_id in move_ids:
                local = base.fork()
                removed = _apply_members(local, moves[move_id][1])
                if removed is not None:
                    scored[move_id] = MoveScore(measure(local, sub, start, end, index), removed, baseline)
                bar.advance(note=move_id)
    return scored


def _apply_members(local, members: tuple[str | None, ...]) -> int | None:
    """Prune MEMBERS in order in the cut-out layer session LOCAL: the parameters removed (by the plans, so
    nothing the cut-out shares with the rest of the model, like the embedding, is counted), or None if one
    of them cannot be pruned."""
    removed = 0
    for node_name in members:
        if node_name is None:
            if len(local.layers) != 1:
                return None  # the attention block is gone already
            plan = local.plan("layer0.attention")
        else:
            if node_name not in local.analysis.transforms:
                return None
            plan = local.plan(node_name)
        if plan.reason is not None:
            return None
        removed += plan.params_removed
        local.apply(plan)
    return removed


def _pruned_layer_distance(local, sub: onnx.ModelProto, cache: LayerCache, start: str, end: str,
                           threads: int | None) -> float:
    """Run the cut-out layer SUB as pruned in session LOCAL on the cached inputs; mean angular distance
    of its output to the cached unpruned output."""
    return _mean_distance(cache.hidden[end], pruned_layer_outputs(local, sub, cache, start, end, threads))


def pruned_layer_outputs(local, sub: onnx.ModelProto, cache: LayerCache, start: str, end: str,
                         threads: int | None) -> list[np.ndarray]:
    """Output END of the cut-out layer SUB, as pruned in session LOCAL, per cached calibration batch."""
    runner = _session(local.to_model(sub), threads)
    names = {i.name for i in runner.get_inputs()} & {v.name for v in sub.graph.input}
    outs = []
    for b, feeds in enumerate(cache.feeds):
        local_feeds = {k: v for k, v in feeds.items() if k in names}
        local_feeds[start] = cache.hidden[start][b]
        outs.append(runner.run([end], local_feeds)[0])
    return outs


def run_distances(model: onnx.ModelProto, session, tokens: np.ndarray) -> list[list[float]]:
    """Gromov et al.'s table from one run of MODEL: TABLE[l][n] is the mean angular distance between the
    input of layer l and the output of layer l + n - 1 (TABLE[l][0] = 0: a run of no layers)."""
    boundaries = layer_boundaries(session)
    cache = cache_layers(model, boundaries, tokens)
    # starts[k]: the tensor entering layer k; starts[L] (L = layer count) is the last layer's output.
    starts = [b[0] for b in boundaries] + [boundaries[-1][1]]
    return [[0.0] + [_mean_distance(cache.hidden[starts[l]], cache.hidden[starts[l + n]])
                     for n in range(1, len(boundaries) - l + 1)] for l in range(len(boundaries))]
