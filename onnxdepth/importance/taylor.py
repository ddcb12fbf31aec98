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

import numpy as np
import onnx

from ..errors import UnsupportedModelError

__all__ = ["TaylorSidecar"]

logger = logging.getLogger(__name__)


def _torch():
    try:
        import torch
        from onnx2torch import convert
    except ImportError:
        raise UnsupportedModelError("--importance taylor needs torch and onnx2torch: pip install 'onnxdepth[taylor]'"
                                    ) from None
    return torch, convert


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
        try:
            module = self.convert(model)
        except Exception as exc:
            raise UnsupportedModelError(f"--importance taylor: onnx2torch cannot convert this graph ({exc})") from None
        module.train(False)
        params = dict(module.named_parameters())
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for batch, target in zip(range(0, len(self.images), self.batch_size), self.targets):
            x = torch.from_numpy(self.images[batch:batch + self.batch_size])
            out = module(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = self._loss(out, torch.from_numpy(target))
            loss.backward()
        scores: dict[tuple[str, int], np.ndarray] = {}
        for name, p in params.items():
            if p.grad is None:
                continue
            module_name, _, kind = name.rpartition(".")
            index = 1 if kind == "weight" else 2
            scores[(module_name, index)] = (p.grad.detach() * p.detach()).double().pow(2).numpy()
        self.scores = scores

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
