"""Distillation losses on a model's own outputs, for models that are not language models (the teacher run by
ONNX Runtime on the same inputs). The loss is picked by the kind of the teacher's first output, as Taylor
importance picks its pseudo-label loss (`importance.taylor.output_kind`):

- ``detect3d`` (ultralytics detection [batch, 4 + classes, anchors]): binary cross-entropy of the student's class
  scores against the teacher's (soft targets), plus L1 on the boxes (in units of the input width) weighted by
  the teacher's best class score at each anchor (where it sees something, the box matters). Held-out metric:
  fidelity mAP50 (the student's detections against the teacher's, `eval.detection`), and the checkpoint kept is
  the one with the best mAP50, the loss only breaking ties: a lower loss over all anchors can come with a lower
  mAP (nudenet YOLOv8n at 0.3: loss 0.0076 -> 0.0057, mAP50 0.949 -> 0.851 when the loss picked the weights).
- ``hidden`` (an encoder's last hidden state [batch, seq, hidden]): 1 - cosine between the student's and the
  teacher's mean-pooled sentence embeddings (attention mask). Held-out metric: the mean cosine.
- ``ctc_probs`` (a CTC recognizer's per-step softmax [batch, time, classes]): KL(teacher || student) per time
  step. Held-out metric: the share of time steps whose argmax class agrees.
- ``prob_map`` (a DB text detector's map [batch, 1, H, W]): binary cross-entropy against the teacher's map.
  Held-out metric: the same loss.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..importance.taylor import _input_specs, output_kind
from ..runtime import open_session

__all__ = ["OutputDistillation"]

#: Weight of the distillation loss beside 1 - mAP50 in a detector's held-out value: it only orders checks whose
#: mAP50 is equal (losses are ~1e-2, mAP steps on 16 images ~1e-3 and more).
LOSS_TIE_BREAK = 1e-3

_KINDS = {"detect3d": "detector: soft class BCE + score-weighted box L1 to the teacher's raw head outputs",
          "hidden": "encoder: cosine to the teacher's mean-pooled embeddings",
          "ctc_probs": "OCR recognizer: KL to the teacher's per-step class distribution",
          "prob_map": "OCR detector: BCE to the teacher's probability map"}
_METRICS = {"detect3d": "fidelity mAP50", "hidden": "cosine", "ctc_probs": "argmax agreement",
            "prob_map": "held-out loss"}


class OutputDistillation:
    """The student's first output against the teacher's (`targets`), by output kind (see the module doc)."""

    def __init__(self, teacher: onnx.ModelProto | str, student: onnx.ModelProto, probe: dict, *,
                 threads: int | None = None):
        self.teacher = open_session(teacher, threads=threads)
        self.inputs = list(_input_specs(student))
        token_inputs = "input_ids" in self.inputs
        self.output_kind = output_kind(self.targets(probe), token_inputs=token_inputs)
        self.kind, self.metric = _KINDS[self.output_kind], _METRICS[self.output_kind]
        self.device = "cpu"  # where the student's tensors live (the loop sets it); the teacher runs in ORT

    def targets(self, batch: dict) -> np.ndarray:
        name = self.teacher.get_outputs()[0].name
        wanted = {i.name for i in self.teacher.get_inputs()}
        return self.teacher.run([name], {k: v for k, v in batch.items() if k in wanted})[0]

    def output(self, torch, module, batch: dict):
        out = module(*[torch.from_numpy(np.ascontiguousarray(batch[name])).to(self.device) for name in self.inputs])
        return out[0] if isinstance(out, (list, tuple)) else out

    def loss(self, torch, output, target, batch: dict):
        target = torch.from_numpy(np.asarray(target, dtype=np.float32)).to(output.device)
        return getattr(self, f"_{self.output_kind}")(torch, output.float(), target, batch)[0]

    def evaluate(self, torch, module, batches: list, targets: list) -> tuple[float, float]:
        """(what the best checkpoint minimises, the held-out metric) on the held-out BATCHES."""
        if self.output_kind == "detect3d":
            return self._detection_fidelity(torch, module, batches, targets)
        losses, metrics, weights = [], [], []
        for batch, target in zip(batches, targets):
            output = self.output(torch, module, batch).float()
            loss, metric = getattr(self, f"_{self.output_kind}")(
                torch, output, torch.from_numpy(np.asarray(target, dtype=np.float32)).to(output.device), batch)
            losses.append(float(loss))
            metrics.append(float(metric))
            weights.append(len(next(iter(batch.values()))))
        return float(np.average(losses, weights=weights)), float(np.average(metrics, weights=weights))

    def _detection_fidelity(self, torch, module, batches: list, targets: list) -> tuple[float, float]:
        """(1 - fidelity mAP50 + LOSS_TIE_BREAK x the mean loss, fidelity mAP50): the student's detections against
        the teacher's on the held-out images, decoded and scored as `onnxdepth eval --task detection` does."""
        from ..eval.detection import PRED_CONF, REFERENCE_CONF, average_precision, decode_ultralytics

        predictions, truths, losses = [], [], []
        for batch, target in zip(batches, targets):
            output = self.output(torch, module, batch).float()
            target_tensor = torch.from_numpy(np.asarray(target, dtype=np.float32)).to(output.device)
            losses.append(float(self._detect3d(torch, output, target_tensor, batch)[0]))
            # One image per row of axis 0: [4 + classes, anchors] each.
            for student_row, teacher_row in zip(output.detach().cpu().numpy(), np.asarray(target)):
                predictions.append(decode_ultralytics(student_row, conf=PRED_CONF))
                truths.append(decode_ultralytics(teacher_row, conf=REFERENCE_CONF)[:, [0, 1, 2, 3, 5]])
        map50 = average_precision(predictions, truths)["map50"]
        map50 = 0.0 if not np.isfinite(map50) else float(map50)  # the teacher detects nothing: the loss decides
        return 1.0 - map50 + LOSS_TIE_BREAK * float(np.mean(losses)), map50

    # -- the losses: (loss, held-out metric) --
    @staticmethod
    def _detect3d(torch, out, target, batch):
        # [batch, 4 + classes, anchors]: boxes (cx, cy, w, h in pixels) on axis-1 rows 0-3, then class scores.
        cls = out[:, 4:].clamp(1e-6, 1 - 1e-6)
        bce = torch.nn.functional.binary_cross_entropy(cls, target[:, 4:].clamp(0.0, 1.0))
        weight = target[:, 4:].amax(dim=1, keepdim=True)  # [batch, 1, anchors]: the teacher's best class score
        scale = float(next(iter(batch.values())).shape[-1])  # the image width (last axis of NCHW)
        l1 = ((out[:, :4] - target[:, :4]).abs() / scale * weight).sum() / weight.sum().clamp(min=1e-6) / 4
        loss = bce + l1
        return loss, loss.detach()

    @staticmethod
    def _hidden(torch, out, target, batch):
        from ..importance.taylor import _mean_pool

        mask = np.asarray(batch.get("attention_mask", np.ones(out.shape[:2], np.int64)))
        mask = torch.from_numpy(mask).to(out.device)
        cosine = (_mean_pool(torch, out, mask) * _mean_pool(torch, target, mask)).sum(-1)  # both L2-normalised
        return (1 - cosine).mean(), cosine.detach().mean()

    @staticmethod
    def _ctc_probs(torch, out, target, batch):
        # Probabilities over the last (class) axis at each time step.
        log_student, log_teacher = out.clamp(min=1e-12).log(), target.clamp(min=1e-12).log()
        kl = (target * (log_teacher - log_student)).sum(-1).mean()
        agreement = (out.argmax(-1) == target.argmax(-1)).float().mean()
        return kl, agreement.detach()

    @staticmethod
    def _prob_map(torch, out, target, batch):
        loss = torch.nn.functional.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), target.clamp(0.0, 1.0))
        return loss, loss.detach()
