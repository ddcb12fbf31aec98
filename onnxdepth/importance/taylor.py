"""Taylor importance (Eq. 3.8-3.10) from a PyTorch gradient sidecar that evaluates the ONNX graph itself.

The current (possibly already pruned) ONNX model is converted with onnx2torch, run on calibration
images, and back-propagated; the per-parameter score is (dE/dw * w)^2 (Eq. 3.8's first-order
estimate of the loss change from zeroing w), summed by the same group sums as magnitude. No model
source code is needed.

Loss for detection models without labels (ultralytics-style output [batch, 4 + classes, anchors]): a
pseudo-label loss against the unpruned model's own confident predictions: binary cross-entropy of the
class scores against hard targets (1 where the reference is confident) plus L1 on the boxes of those
anchors. Other models: mean squared error to the reference outputs plus the same hard-target idea is
not defined, so they are refused.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx

from ..errors import UnsupportedModelError

__all__ = ["TaylorSidecar", "TaylorLMScores", "initializer_gradients"]

logger = logging.getLogger(__name__)


def _torch():
    try:
        import torch
        from onnx2torch import convert
    except ImportError:
        raise UnsupportedModelError("--importance taylor needs torch and onnx2torch: pip install 'onnxdepth[taylor]'"
                                    ) from None
    from .torch_ops import register_missing_converters

    register_missing_converters()
    return torch, convert


def _convert(convert, model: onnx.ModelProto):
    try:
        return convert(model, attach_onnx_mapping=True)
    except Exception as exc:
        raise UnsupportedModelError(f"--importance taylor: onnx2torch cannot convert this graph "
                                    f"({str(exc).splitlines()[0][:160]})") from None


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


class TaylorSidecar:
    """Per-parameter Taylor scores of the current model, recomputed on demand."""

    def __init__(self, reference: onnx.ModelProto, images: np.ndarray, conf: float = 0.25, batch_size: int = 8):
        self.torch, self.convert = _torch()
        self.images = images.astype(np.float32)
        first = reference.graph.input[0].type.tensor_type.shape.dim
        # A model exported with a fixed batch of 1 takes one image at a time.
        self.batch_size = 1 if first and first[0].HasField("dim_value") and first[0].dim_value == 1 else batch_size
        self.conf = conf
        self.targets = self._reference_outputs(reference)
        self.scores: dict[tuple[str, int], np.ndarray] = {}

    def _reference_outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = []
        for start in range(0, len(self.images), self.batch_size):
            try:
                out = session.run(None, {name: self.images[start:start + self.batch_size]})[0]
            except Exception as exc:
                raise UnsupportedModelError(f"--importance taylor: the model does not take the calibration images "
                                            f"({str(exc).splitlines()[0][:120]})") from None
            if out.ndim != 3:
                raise UnsupportedModelError("--importance taylor: only ultralytics-style detection outputs "
                                            "[batch, 4 + classes, anchors] have a label-free loss yet")
            outputs.append(out)
        return outputs

    def refresh(self, model: onnx.ModelProto) -> None:
        """Recompute (dE/dw * w)^2 for every weight of MODEL (the current graph)."""
        torch = self.torch
        module = _convert(self.convert, model)
        module.train(False)
        tensors = initializer_gradients(module, model, torch)
        for batch, target in zip(range(0, len(self.images), self.batch_size), self.targets):
            x = torch.from_numpy(self.images[batch:batch + self.batch_size])
            out = module(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = self._loss(out, torch.from_numpy(target))
            loss.backward()
        self.scores = _taylor_from_gradients(tensors)

    def _loss(self, out, target):
        torch = self.torch
        # [batch, 4 + classes, anchors]: boxes (cx, cy, w, h in pixels) then class probabilities.
        cls_ref, cls = target[:, 4:], out[:, 4:].clamp(1e-6, 1 - 1e-6)
        hard = (cls_ref > self.conf).float()
        bce = torch.nn.functional.binary_cross_entropy(cls, hard)
        positive = hard.amax(dim=1, keepdim=True)  # anchors where the reference detects something
        scale = float(self.images.shape[-1])
        l1 = ((out[:, :4] - target[:, :4]).abs() / scale * positive).sum() / positive.sum().clamp(min=1.0)
        return bce + l1

    def __call__(self, node, index: int, values: np.ndarray) -> np.ndarray:
        score = self.scores.get((_module_name(node.name), index))
        if score is None or score.shape != values.shape:
            # A parameter the sidecar did not see (or not in this shape): fall back to |w|^2 scaled down.
            return np.zeros(values.shape, dtype=np.float64)
        return score


class TaylorLMScores:
    """One-shot Taylor scores of a causal LM: next-token cross-entropy on calibration tokens.

    The ONNX graph itself is evaluated with autograd (onnx2torch plus the converters in torch_ops), in
    batches of BATCH_SIZE sequences; gradients accumulate over the batches before (dE/dw * w)^2 is taken.
    As for angular importance, the scores are computed once on the unpruned model (the thesis's setting).
    """

    def __init__(self, model: onnx.ModelProto, tokens: np.ndarray, *, batch_size: int = 4, progress: bool = True):
        torch, convert = _torch()
        from .angular import model_feeds

        module = _convert(convert, model)
        module.train(False)
        tensors = initializer_gradients(module, model, torch)
        specs = _input_specs(model)
        if "input_ids" not in specs:
            raise UnsupportedModelError("--importance taylor on a transformer needs a causal LM with an input_ids "
                                        "input")
        logits_index = _logits_output(model)
        bar = _bar(len(range(0, len(tokens), batch_size)), progress)
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size]
            feeds = model_feeds(specs, batch)
            # onnx2torch's module takes the graph inputs positionally, in graph order.
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in specs]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # onnx2torch's Slice indexes with a list
                out = module(*args)
            logits = out[logits_index] if isinstance(out, (list, tuple)) else out
            # Next-token loss: position t predicts token t + 1 (the last position has no target).
            target = torch.from_numpy(batch[:, 1:])
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     target.reshape(-1))
            loss.backward()
            del out, logits, loss
            bar(1)
        bar(None)
        self.scores = _taylor_from_gradients(tensors)

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


def _bar(total: int, enabled: bool):
    import sys

    if not enabled or not sys.stderr.isatty():
        return lambda step: None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    task = progress.add_task("taylor: gradients", total=total)

    def advance(step):
        if step is None:
            progress.stop()
        else:
            progress.update(task, advance=step)

    return advance
