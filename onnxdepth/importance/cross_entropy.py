"""Cross-entropy importance (thesis Sec. 4.3): how much pruning a unit changes the next-token distribution.

I_f = E[CE(p, p[Prune(f)])] = E[-sum_v p(v) log p'(v)] over every calibration token, where p is the
unpruned model's next-token distribution and p' the same with unit f pruned. Computed through ONNX
Runtime as a chain of cut-out pieces, so nothing before a unit's layer is ever re-run:

- one run of the whole model caches every layer's input (as for angular importance) and the input of
  the final norm; the LM head (final norm + projection) is cut out and gives the reference p;
- a unit of layer l is scored by running its pruned layer on the cached input of l, then the unpruned
  layers l+1 .. L-1 (one ONNX Runtime session each, built once and reused) and the head.

Lower is less important. The reference distribution is kept as float16 probabilities (calibration
tokens x vocabulary x 2 bytes: 4,096 x 49,152 x 2 B = 400 MB for 32 x 128 tokens on SmolLM2). The CE
itself is computed inside the head's ONNX Runtime session (`with_cross_entropy`), so the [tokens,
vocabulary] logits never leave it: numpy's single-threaded exp over them cost more than the layers.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UnsupportedModelError
from ..graph.extract import extract_submodel
from ..runtime import progress as progress_bar
from .angular import LayerCache, cache_layers, layer_boundaries, pruned_layer_outputs, pruned_layer_variants
from .shared_weights import SharedWeights

__all__ = ["cross_entropy_scores", "log_softmax", "cross_entropy", "with_cross_entropy", "reference_distribution",
           "chained_measure"]

logger = logging.getLogger(__name__)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Max-shifted log-softmax over the last axis, in float32 (enough for a mean over thousands of tokens)."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(reference_probs: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per-token CE(p, q) = -sum_v p(v) log q(v) over the last (vocabulary) axis, q = softmax(LOGITS), in numpy
    (scoring uses the in-graph `with_cross_entropy`; this is its reference).

    Computed as logsumexp(z) * sum_v p(v) - sum_v p(v) z(v) (log q = z - logsumexp(z)), which never
    materialises log q: three passes over the [tokens, vocabulary] logits instead of six, 3x faster.
    """
    logits = logits.astype(np.float32, copy=False)
    probs = reference_probs.astype(np.float32)
    peak = logits.max(axis=-1, keepdims=True)  # max-shift over the vocabulary axis
    lse = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[..., 0]
    return lse * probs.sum(axis=-1) - np.einsum("...v,...v->...", probs, logits)


#: Names of the reference-probability input and per-token CE output `with_cross_entropy` adds.
REFERENCE_INPUT, CE_OUTPUT = "onnxdepth_reference_probs", "onnxdepth_token_ce"


def with_cross_entropy(head: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """HEAD (hidden -> LOGITS [..., vocabulary]) with one more input, the float16 reference probabilities
    p of the same shape, and one output, the per-token CE(p, softmax(logits)) over the last axis, as in
    `cross_entropy`: logsumexp(z) * sum_v p(v) - sum_v p(v) z(v)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(head)
    graph = extended.graph
    prefix = "onnxdepth_ce_"
    logits_info = next(o for o in graph.output if o.name == logits)
    # The logits' shape where known (a cut-out head may carry none; ONNX Runtime needs none).
    shape = logits_info.type.tensor_type.shape if logits_info.type.tensor_type.HasField("shape") else None
    dims = [d.dim_param or d.dim_value for d in shape.dim] if shape is not None else None
    graph.input.append(helper.make_tensor_value_info(REFERENCE_INPUT, TensorProto.FLOAT16, dims))
    opset = next((o.version for o in extended.opset_import if o.domain in ("", "ai.onnx")), 18)

    def reduce(op: str, data: str, out: str) -> onnx.NodeProto:
        # Over the vocabulary (last) axis; axes became an input in opset 13 (ReduceSum) / 18 (the others).
        if opset >= (13 if op == "ReduceSum" else 18):
            return helper.make_node(op, [data, prefix + "axes"], [out], keepdims=0)
        return helper.make_node(op, [data], [out], keepdims=0, axes=[-1])

    graph.initializer.append(helper.make_tensor(prefix + "axes", TensorProto.INT64, [1], [-1]))
    if logits_info.type.tensor_type.elem_type != TensorProto.FLOAT:
        # A float16 / bfloat16 export: the CE is taken in float32 like the reference.
        graph.node.append(helper.make_node("Cast", [logits], [prefix + "z"], to=TensorProto.FLOAT))
        logits = prefix + "z"
    graph.node.extend([
        helper.make_node("Cast", [REFERENCE_INPUT], [prefix + "p"], to=TensorProto.FLOAT),
        reduce("ReduceLogSumExp", logits, prefix + "lse"),
        reduce("ReduceSum", prefix + "p", prefix + "mass"),
        helper.make_node("Mul", [prefix + "p", logits], [prefix + "pz"]),
        reduce("ReduceSum", prefix + "pz", prefix + "expected_z"),
        helper.make_node("Mul", [prefix + "lse", prefix + "mass"], [prefix + "scaled_lse"]),
        helper.make_node("Sub", [prefix + "scaled_lse", prefix + "expected_z"], [CE_OUTPUT]),
    ])
    del graph.output[:]
    token_dims = dims[:-1] if dims else None  # the logits' shape less the vocabulary axis
    graph.output.append(helper.make_tensor_value_info(CE_OUTPUT, TensorProto.FLOAT, token_dims))
    return extended


def _logits_name(model: onnx.ModelProto) -> str:
    names = [o.name for o in model.graph.output]
    if "logits" in names:
        return "logits"
    raise UnsupportedModelError("--importance cross_entropy needs a causal LM with a 'logits' output "
                                "(an optimum text-generation export)")


class _Chain:
    """ONNX Runtime sessions for the unpruned layers and the head, built on first use."""

    def __init__(self, model: onnx.ModelProto, cache: LayerCache, head_input: str, logits: str,
                 threads: int | None):
        self.model, self.cache, self.threads = model, cache, threads
        self.head_input, self.logits = head_input, logits
        # One embedding for the thirty-odd layer sessions (each cut-out layer reads it for its shapes).
        self.shared = SharedWeights(model)
        self._layers: dict[int, object] = {}
        self._head = None
        self._head_ce = None

    def _feeds(self, runner, batch: int, name: str, value: np.ndarray) -> dict:
        wanted = {i.name for i in runner.get_inputs()}
        feeds = {k: v for k, v in self.cache.feeds[batch].items() if k in wanted}
        feeds[name] = value
        return feeds

    def layer(self, index: int, hidden: np.ndarray, batch: int) -> np.ndarray:
        start, end = self.cache.boundaries[index]
        if index not in self._layers:
            self._layers[index] = self.shared.session(extract_submodel(self.model, [start], [end]), self.threads)
        runner = self._layers[index]
        return runner.run([end], self._feeds(runner, batch, start, hidden))[0]

    def head(self, hidden: np.ndarray, batch: int) -> np.ndarray:
        if self._head is None:
            self._head = self.shared.session(extract_submodel(self.model, [self.head_input], [self.logits]),
                                             self.threads)
        return self._head.run([self.logits], self._feeds(self._head, batch, self.head_input, hidden))[0]

    def head_ce(self, hidden: np.ndarray, batch: int, reference: np.ndarray) -> np.ndarray:
        """Per-token CE(REFERENCE, head(HIDDEN)), computed in the head's session."""
        if self._head_ce is None:
            head = extract_submodel(self.model, [self.head_input], [self.logits])
            self._head_ce = self.shared.session(with_cross_entropy(head, self.logits), self.threads)
        feeds = self._feeds(self._head_ce, batch, self.head_input, hidden)
        feeds[REFERENCE_INPUT] = reference
        return self._head_ce.run([CE_OUTPUT], feeds)[0]

    def finish_ce(self, hidden: np.ndarray, after: int, batch: int, reference: np.ndarray) -> np.ndarray:
        """Per-token CE against REFERENCE from HIDDEN, the output of layer AFTER: the remaining layers,
        then the head."""
        for index in range(after + 1, len(self.cache.boundaries)):
            hidden = self.layer(index, hidden, batch)
        return self.head_ce(hidden, batch, reference)


def cross_entropy_scores(model: onnx.ModelProto, session, tokens: np.ndarray, *, batch_size: int = 8,
                         threads: int | None = None, progress: bool = True) -> dict[str, float]:
    """Cross-entropy importance of every unit of SESSION (its granularity)."""
    if not session.layers:
        raise UnsupportedModelError("cross-entropy importance needs a transformer (no attention block found)")
    logits = _logits_name(model)
    started = time.perf_counter()
    boundaries = layer_boundaries(session)
    head_input = boundaries[-1][1]
    cache = cache_layers(model, boundaries, tokens, batch_size=batch_size, threads=threads)
    chain = _Chain(model, cache, head_input, logits, threads)
    reference = _reference_probs(chain)
    unit_ids = list(session.structural_ids())
    scores: dict[str, float] = {}
    with progress_bar(len(unit_ids), "cross-entropy importance", progress) as bar:
        for index, (start, end) in enumerate(boundaries):
            prefix = f"layer{index}."
            kinds = [u[len(prefix):] for u in unit_ids if u.startswith(prefix)]
            if not kinds:
                continue
            if kinds == ["block"]:
                # A pruned layer is the identity: its input goes straight on to the next layer.
                outputs = [hidden for hidden in cache.hidden[start]]
                scores[prefix + "block"] = _mean_ce(chain, reference, outputs, index)
                bar.advance(note=prefix + "block")
                continue
            for kind, local, sub in pruned_layer_variants(model, session, cache, index, kinds):
                outputs = pruned_layer_outputs(local, sub, cache, start, end, threads)
                scores[prefix + kind] = _mean_ce(chain, reference, outputs, index)
                bar.advance(note=prefix + kind)
    logger.info("cross-entropy scores for %d units in %.1f s", len(scores), time.perf_counter() - started)
    return scores


def _mean_ce(chain: _Chain, reference: list[np.ndarray], layer_outputs: list[np.ndarray], index: int) -> float:
    total, count = 0.0, 0
    for b, hidden in enumerate(layer_outputs):
        ce = chain.finish_ce(hidden, index, b, reference[b])
        total += float(ce.sum(dtype=np.float64))
        count += ce.size
    return total / max(count, 1)


def reference_distribution(model: onnx.ModelProto, boundaries: list[tuple[str, str]], tokens: np.ndarray, *,
                           batch_size: int = 8, threads: int | None = None) -> list[np.ndarray]:
    """The unpruned model's next-token probabilities (float16), one array per calibration batch."""
    logits = _logits_name(model)
    cache = cache_layers(model, boundaries, tokens, batch_size=batch_size, threads=threads)
    return _reference_probs(_Chain(model, cache, boundaries[-1][1], logits, threads))


def _reference_probs(chain: _Chain) -> list[np.ndarray]:
    """Next-token probabilities p (float16), one array per batch, from the head run on its cached input."""
    return [np.exp(log_softmax(chain.head(hidden, b))).astype(np.float16)
            for b, hidden in enumerate(chain.cache.hidden[chain.head_input])]


def chained_measure(reference: list[np.ndarray], threads: int | None = None):
    """A `score_moves` MEASURE: CE against REFERENCE (the unpruned model's distribution) of the current model
    with one more move applied, the rest of the current model run on from the move's layer. The bound
    measure's ``baseline`` is the current model's own CE (what a move's damage is counted from)."""

    def bind(model: onnx.ModelProto, cache: LayerCache):
        chain = _Chain(model, cache, cache.boundaries[-1][1], _logits_name(model), threads)

        def measure(local, sub, start, end, index):
            return _mean_ce(chain, reference, pruned_layer_outputs(local, sub, cache, start, end, threads), index)

        # The current model's logits: its cached last hidden state through the head.
        last = cache.boundaries[-1][1]
        measure.baseline = _mean_ce(chain, reference, cache.hidden[last], len(cache.boundaries) - 1)
        return measure

    return bind
