"""Taylor importance (Eq. 3.8-3.10) from a PyTorch gradient sidecar that evaluates the ONNX graph itself.

The current (possibly already pruned) ONNX model is converted with onnx2torch (weights that paddle2onnx
stores as Constant nodes are made initializers first), run on calibration inputs, and back-propagated; the
per-parameter score is (dE/dw * w)^2 (Eq. 3.8's first-order estimate of the loss change from zeroing w),
summed by the same group sums as magnitude. No model source code is needed.

There are no labels, so E is a pseudo-label loss against the *unpruned* model's own outputs (the
reference, run in ONNX Runtime). It must not be a plain distance to the reference: that has a zero
gradient at the unpruned point, where the scores are taken first. Each loss below compares the model's
output with a *hardened* or *contrasted* version of the reference, which the unpruned model does not
reproduce exactly, so dE/dw != 0 there. The loss is picked by the kind of output (``output_kind``, from the
reference output itself; ``PSEUDO_LABEL_LOSSES``):

* ``detect3d``, ultralytics-style detection [batch, 4 + classes, anchors]: binary cross-entropy of the
  class scores against hard targets (1 where the reference score is > ``conf`` = 0.25) plus L1 (in units of
  the input width) on the boxes of the anchors where the reference detects something.
* ``ctc_probs``, a CTC recognizer's per-timestep softmax [batch, time, classes] (PP-OCR rec): cross-entropy
  of the model's distribution at every time step against the reference's argmax class (hard
  classification pseudo-labels, blank included), averaged over batch and time.
* ``prob_map``, a DB text detector's probability map [batch, 1, H, W] (PP-OCR det): binary cross-entropy of
  the map against the reference map binarised at 0.3 (the DB threshold), averaged over pixels.
* ``hidden``, an encoder's last hidden state [batch, seq, hidden] (MiniLM / BERT feature extraction): an
  in-batch contrastive (InfoNCE) loss: the model's mean-pooled (attention mask), L2-normalised sentence
  embeddings against the reference embeddings of the same batch, cosine similarities / 0.05 as logits,
  cross-entropy with each sentence's own reference as its class. At the unpruned point the own similarity
  is 1 but the others are not -inf, so the softmax is not one-hot and the gradient is not zero.

Causal LMs (``TaylorLMScores``) use the next-token cross-entropy on the calibration tokens: real labels.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from ..allocator import reuse_freed_memory
from ..errors import UnsupportedModelError
from ..runtime import first_line, open_session, ort_errors
from ..runtime import progress as progress_bar

__all__ = ["PSEUDO_LABEL_LOSSES", "TaylorEncoderScores", "TaylorLMScores", "TaylorSidecar", "initializer_gradients",
           "output_kind", "torch_module"]

logger = logging.getLogger(__name__)

#: Confidence above which a reference class score is a positive detection (ultralytics' default conf).
DETECT_CONF = 0.25
#: DB binarisation threshold of PP-OCR's detector post-processing (``eval.ocr.DET_THRESH``).
PROB_MAP_THRESHOLD = 0.3
#: Softmax temperature of the in-batch contrastive loss on sentence embeddings (SimCSE's).
INFONCE_TEMPERATURE = 0.05


def _torch():
    try:
        import torch
        from onnx2torch import convert
    except ImportError as exc:
        raise UnsupportedModelError("--importance taylor needs torch and onnx2torch: pip install 'onnxdepth[taylor]'"
                                    ) from exc
    from .torch_ops import register_missing_converters

    register_missing_converters()
    return torch, convert


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL with every floating-point Constant node of rank >= 1 turned into an initializer of the same name.

    paddle2onnx (PP-OCR) stores all weights as Constant nodes, and onnx2torch reads Conv / BatchNormalization
    weights from initializers only. The consuming nodes keep their names and input lists, so the scores'
    (node, input index) keys are unchanged. MODEL itself is returned when there is nothing to lift.
    """
    floating = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)

    def liftable(node) -> bool:
        return (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
                and node.attribute[0].name == "value" and node.attribute[0].t.data_type in floating
                and len(node.attribute[0].t.dims) >= 1)

    initializers = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}

    def shared(node) -> bool:
        # Exporters deduplicate equal weights (e.g. the zero biases of a random-weight YOLO) into one
        # initializer read through Identity nodes; onnx2torch wants each Conv's own initializer.
        return (node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs)

    if not any(liftable(n) or shared(n) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {t.name: t for t in out.graph.initializer}
    kept = []
    for node in out.graph.node:  # topological order: an Identity's source is lifted before it is read
        if liftable(node):
            tensor = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            out.graph.initializer.append(tensor)
            values[tensor.name] = tensor
        elif node.op_type == "Identity" and node.input[0] in values and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(values[node.input[0]])
            copy.name = node.output[0]
            out.graph.initializer.append(copy)
            values[copy.name] = copy
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def _convert(convert, model: onnx.ModelProto):
    try:
        return convert(_constants_as_initializers(model), attach_onnx_mapping=True)
    except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:  # onnx2torch's refusals
        raise UnsupportedModelError(f"--importance taylor: onnx2torch cannot convert this graph "
                                    f"({first_line(exc, limit=160)})") from exc


def torch_module(model: onnx.ModelProto):
    """MODEL as a PyTorch module in inference mode (onnx2torch plus the converters in torch_ops); it takes the
    graph inputs positionally, in graph order, and returns the graph outputs (a tuple when there are several)."""
    _, convert = _torch()
    module = _convert(convert, model)
    module.train(False)
    return module


def _weight_tensors(module, model: onnx.ModelProto) -> dict[tuple[str, int], object]:
    """(module name, ONNX input index) -> the torch tensor holding that weight in MODULE.

    onnx2torch keeps Conv/Gemm weights as parameters (`<module>.weight` at input 1, `.bias` at 2) and every
    other initializer as a buffer fed to the consuming module by a get_attr node; the module's
    onnx_mapping names the ONNX value behind each argument, so the ONNX input index is recovered exactly.
    """
    tensors: dict[tuple[str, int], object] = {}
    for name, param in module.named_parameters():
        module_name, _, kind = name.rpartition(".")
        tensors[(module_name, 1 if kind == "weight" else 2)] = param
    by_module = {_module_name(n.name): n for n in model.graph.node}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module" or fx_node.target not in by_module:
            continue
        mapping = getattr(module.get_submodule(fx_node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        onnx_inputs = list(by_module[fx_node.target].input)
        for position, arg in enumerate(fx_node.args):
            if getattr(arg, "op", None) != "get_attr" or position >= len(mapping.inputs):
                continue
            value_name = mapping.inputs[position]
            if value_name in onnx_inputs:
                tensors[(fx_node.target, onnx_inputs.index(value_name))] = module.get_parameter(arg.target) \
                    if arg.target in dict(module.named_parameters()) else module.get_buffer(arg.target)
    return tensors


def initializer_gradients(module, model: onnx.ModelProto, torch) -> dict[tuple[str, int], object]:
    """Make every floating weight of MODULE require a gradient; returns them keyed as `_weight_tensors`."""
    tensors = {k: t for k, t in _weight_tensors(module, model).items() if t.is_floating_point()}
    for tensor in tensors.values():
        tensor.requires_grad_(True)
        tensor.grad = None
    return tensors


def _taylor_from_gradients(tensors: dict) -> dict[tuple[str, int], np.ndarray]:
    # Eq. 3.8: the first-order estimate of the loss change from zeroing w is (dE/dw * w)^2.
    return {key: (t.grad.detach() * t.detach()).double().pow(2).numpy() for key, t in tensors.items()
            if t.grad is not None}


def _module_name(node_name: str) -> str:
    # onnx2torch names a node's module after the node, with '.' turned into '/' and no leading '/'.
    return node_name.lstrip("/").replace(".", "/")


# -- pseudo-label losses -----------------------------------------------------------------------------------

def _detect3d_loss(torch, out, target, batch: dict, *, conf: float = DETECT_CONF):
    # [batch, 4 + classes, anchors]: boxes (cx, cy, w, h in pixels) on axis-1 rows 0-3, then class scores.
    cls_ref, cls = target[:, 4:], out[:, 4:].clamp(1e-6, 1 - 1e-6)
    hard = (cls_ref > conf).float()
    bce = torch.nn.functional.binary_cross_entropy(cls, hard)
    positive = hard.amax(dim=1, keepdim=True)  # anchors (axis 2) where the reference detects some class
    scale = float(next(iter(batch.values())).shape[-1])  # the image input's width (last axis of NCHW)
    l1 = ((out[:, :4] - target[:, :4]).abs() / scale * positive).sum() / positive.sum().clamp(min=1.0)
    return bce + l1


def _ctc_probs_loss(torch, out, target, batch: dict):
    # [batch, time, classes] probabilities: the reference's best class per (batch, time step) is the label.
    labels = target.argmax(dim=-1)
    log_probs = out.clamp(min=1e-12).log()  # the graph ends in a softmax: probabilities, not logits
    picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [batch, time]: log p of the label
    return -picked.mean()


def _prob_map_loss(torch, out, target, batch: dict, *, threshold: float = PROB_MAP_THRESHOLD):
    # [batch, 1, H, W] probabilities against the reference text mask (DB binarisation), every pixel alike.
    mask = (target > threshold).float()
    return torch.nn.functional.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), mask)


def _mean_pool(torch, hidden, mask):
    # [batch, seq, hidden] averaged over the sequence axis (1) where the attention mask is 1, then L2-normalised.
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _hidden_loss(torch, out, target, batch: dict, *, temperature: float = INFONCE_TEMPERATURE):
    # [batch, seq, hidden]: sentence i's embedding should be closest to reference embedding i (InfoNCE).
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    embeddings, reference = _mean_pool(torch, out, mask), _mean_pool(torch, target, mask)
    logits = embeddings @ reference.T / temperature  # [sentence, reference sentence]: cosine / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(ids)))


#: Label-free losses by output kind: loss(torch, output, reference output, batch feeds) -> scalar tensor.
PSEUDO_LABEL_LOSSES = {"detect3d": _detect3d_loss, "ctc_probs": _ctc_probs_loss, "prob_map": _prob_map_loss,
                       "hidden": _hidden_loss}

_KIND_NAMES = ("ultralytics detection [batch, 4 + classes, anchors], CTC probabilities [batch, time, classes], "
               "a probability map [batch, 1, H, W], or an encoder's hidden states [batch, seq, hidden] from "
               "token inputs")


def output_kind(reference: np.ndarray, *, token_inputs: bool = False) -> str:
    """The PSEUDO_LABEL_LOSSES key for a model whose (first) output on calibration inputs is REFERENCE.

    TOKEN_INPUTS: the model takes input_ids (an encoder), so a rank-3 output is a hidden state.
    """
    shape = reference.shape
    probabilities = reference.size > 0 and float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
    if token_inputs:
        if reference.ndim == 3:
            return "hidden"
    elif reference.ndim == 4 and shape[1] == 1 and probabilities:
        return "prob_map"
    elif reference.ndim == 3 and shape[2] > 2 and probabilities and \
            np.allclose(reference.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3):  # a softmax over the last axis
        return "ctc_probs"
    elif reference.ndim == 3 and shape[1] > 4:
        return "detect3d"
    raise UnsupportedModelError(f"--importance taylor: no label-free loss for an output of shape {list(shape)} "
                                f"(supported: {_KIND_NAMES})")


def _image_batches(name: str, images, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Feeds {NAME: [n, 3, H, W]} of at most BATCH_SIZE images; IMAGES is one array [N, 3, H, W] or a list of
    [n, 3, H, W] arrays (text lines of different widths), consecutive ones of one shape sharing a batch."""
    if isinstance(images, np.ndarray):
        images = [images]  # one array [N, 3, H, W]: its rows are the images
    batches: list[list[np.ndarray]] = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        for row in range(len(image)):
            item = image[row:row + 1]
            last = batches[-1] if batches else None
            if last is not None and len(last) < batch_size and last[0].shape == item.shape:
                last.append(item)
            else:
                batches.append([item])
    return [{name: np.ascontiguousarray(np.concatenate(b))} for b in batches]


class _PseudoLabelTaylor:
    """Per-parameter Taylor scores of a model on fixed calibration batches, with a pseudo-label loss
    against the reference model's own outputs (computed once, in ONNX Runtime)."""

    def __init__(self, reference: onnx.ModelProto, batches: list[dict[str, np.ndarray]], *, output: int = 0,
                 token_inputs: bool = False, options: dict[str, dict] | None = None):
        self.torch, self.convert = _torch()
        self.batches = batches
        self.output = output
        self.inputs = list(_input_specs(reference))
        self.targets = self._reference_outputs(reference)
        self.kind = output_kind(self.targets[0], token_inputs=token_inputs)
        # OPTIONS: keyword arguments of the loss, by kind (e.g. the detection threshold of detect3d).
        self.loss = functools.partial(PSEUDO_LABEL_LOSSES[self.kind], self.torch, **(options or {}).get(self.kind, {}))
        self.scores: dict[tuple[str, int], np.ndarray] = {}
        self.last_loss: float | None = None

    def _reference_outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        session = open_session(model)
        name = session.get_outputs()[self.output].name
        outputs = []
        for feeds in self.batches:
            try:
                outputs.append(session.run([name], feeds)[0])
            except ort_errors() as exc:  # shape / type mismatches
                raise UnsupportedModelError(f"--importance taylor: the model does not take the calibration inputs "
                                            f"({first_line(exc, limit=120)})") from exc
        return outputs

    def refresh(self, model: onnx.ModelProto) -> float:
        """Recompute (dE/dw * w)^2 for every weight of MODEL (the current graph); returns the mean loss E."""
        torch = self.torch
        module = _convert(self.convert, model)
        module.train(False)
        tensors = initializer_gradients(module, model, torch)
        total = 0.0
        with reuse_freed_memory():  # the same activations every batch: no fresh pages for them (`allocator`)
            for feeds, target in zip(self.batches, self.targets):
                batch = {name: torch.from_numpy(feeds[name]) for name in self.inputs}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # onnx2torch's Slice indexes with a list
                    out = module(*batch.values())  # the graph inputs positionally, in graph order
                out = out[self.output] if isinstance(out, (list, tuple)) else out
                loss = self.loss(out, torch.from_numpy(target), batch)
                loss.backward()
                total += float(loss.detach())
                del out, loss
        self.scores = _taylor_from_gradients(tensors)
        self.last_loss = total / max(len(self.batches), 1)
        return self.last_loss

    def __call__(self, node, index: int, values: np.ndarray) -> np.ndarray:
        score = self.scores.get((_module_name(node.name), index))
        if score is None or score.shape != values.shape:
            # A parameter the sidecar did not see (or not in this shape): no evidence that it matters.
            return np.zeros(values.shape, dtype=np.float64)
        return score


class TaylorSidecar(_PseudoLabelTaylor):
    """Per-parameter Taylor scores of a one-image-input model, recomputed on demand (``refresh``).

    IMAGES: calibration inputs, preprocessed as the model expects: one array [N, 3, H, W] (detector
    photos, rendered pages) or a list of [n, 3, H, W] arrays of different widths (text lines). The loss is
    chosen by the kind of the reference output (``output_kind``); CONF is the detection threshold.
    """

    def __init__(self, reference: onnx.ModelProto, images, conf: float = DETECT_CONF, batch_size: int = 8):
        specs = _input_specs(reference)
        if len(specs) != 1:
            raise UnsupportedModelError(f"--importance taylor: expected one image input, the model has "
                                        f"{', '.join(specs) or 'none'}")
        name, spec = next(iter(specs.items()))
        # A model exported with a fixed batch of 1 takes one image at a time.
        self.batch_size = 1 if spec.shape and spec.shape[0] == 1 else batch_size
        self.images = images
        self.conf = conf
        super().__init__(reference, _image_batches(name, images, self.batch_size), options={"detect3d": {"conf": conf}})


class TaylorEncoderScores(_PseudoLabelTaylor):
    """One-shot Taylor scores of a sentence encoder (output [batch, seq, hidden]) with the in-batch contrastive
    loss on BATCHES of tokenised sentences (feeds per graph input). As for causal LMs, the scores are
    computed once, on the unpruned model."""

    def __init__(self, model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]):
        super().__init__(model, batches, output=_hidden_output(model), token_inputs=True)
        self.refresh(model)


def _hidden_output(model: onnx.ModelProto) -> int:
    """Index of the encoder output to pool: last_hidden_state, else the first rank-3 output, else 0."""
    outputs = list(model.graph.output)
    names = [o.name for o in outputs]
    if "last_hidden_state" in names:
        return names.index("last_hidden_state")
    ranks = [len(o.type.tensor_type.shape.dim) for o in outputs]
    return ranks.index(3) if 3 in ranks else 0


class TaylorLMScores:
    """One-shot Taylor scores of a causal LM: next-token cross-entropy on calibration tokens.

    The ONNX graph itself is evaluated with autograd (onnx2torch plus the converters in torch_ops), in
    batches of BATCH_SIZE sequences; gradients accumulate over the batches before (dE/dw * w)^2 is taken.
    As for angular importance, the scores are computed once on the unpruned model (the thesis's setting).
    """

    def __init__(self, model: onnx.ModelProto, tokens: np.ndarray, *, batch_size: int = 4, progress: bool = True,
                 reuse_memory: bool = True):
        torch, convert = _torch()
        from .angular import model_feeds

        # Seconds per phase (tools/taylor_memory.py prints them): conversion, then forward / backward per batch.
        self.timings: dict[str, object] = {"forward": [], "backward": []}
        started = time.perf_counter()
        module = _convert(convert, model)
        module.train(False)
        tensors = initializer_gradients(module, model, torch)
        self.timings["convert"] = time.perf_counter() - started
        specs = _input_specs(model)
        if "input_ids" not in specs:
            raise UnsupportedModelError("--importance taylor on a transformer needs a causal LM with an input_ids "
                                        "input")
        logits_index = _logits_output(model)
        steps = len(range(0, len(tokens), batch_size))
        with reuse_freed_memory(reuse_memory), \
                progress_bar(steps, "taylor: gradients", progress and sys.stderr.isatty()) as bar:  # a terminal only
            for start in range(0, len(tokens), batch_size):
                batch = tokens[start:start + batch_size]
                feeds = model_feeds(specs, batch)
                # onnx2torch's module takes the graph inputs positionally, in graph order.
                args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in specs]
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # onnx2torch's Slice indexes with a list
                    out = module(*args)
                logits = out[logits_index] if isinstance(out, (list, tuple)) else out
                # Next-token loss: position t predicts token t + 1 (the last position has no target).
                target = torch.from_numpy(batch[:, 1:])
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                         target.reshape(-1))
                self.timings["forward"].append(time.perf_counter() - started)
                started = time.perf_counter()
                loss.backward()
                self.timings["backward"].append(time.perf_counter() - started)
                del out, logits, loss
                bar.advance()
        started = time.perf_counter()
        self.scores = _taylor_from_gradients(tensors)
        self.timings["scores"] = time.perf_counter() - started

    def __call__(self, node, index: int, values: np.ndarray) -> np.ndarray:
        score = self.scores.get((_module_name(node.name), index))
        if score is None or score.shape != values.shape:
            return np.zeros(values.shape, dtype=np.float64)
        return score


class _Spec:
    """What model_feeds needs of a graph input: its name and (for past_key_values) its shape."""

    def __init__(self, value: onnx.ValueInfoProto):
        self.name = value.name
        self.shape = [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in value.type.tensor_type.shape.dim]


def _input_specs(model: onnx.ModelProto) -> dict[str, _Spec]:
    initializers = {t.name for t in model.graph.initializer}
    return {v.name: _Spec(v) for v in model.graph.input if v.name not in initializers}


def _logits_output(model: onnx.ModelProto) -> int:
    names = [o.name for o in model.graph.output]
    return names.index("logits") if "logits" in names else 0
