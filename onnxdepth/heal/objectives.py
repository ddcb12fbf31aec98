"""What healing minimises, by the kind of model: for a causal LM, the KL divergence from the teacher's next-token
distribution to the student's, per token (the teacher, the unpruned model, run by ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedModelError
from ..importance.angular import model_feeds
from ..importance.taylor import _input_specs, _logits_output
from ..runtime import open_session

__all__ = ["LMDistillation"]


class LMDistillation:
    """KL(teacher || student) over the vocabulary at every position, averaged over tokens, at TEMPERATURE
    (scaled by its square, as in Hinton et al.). Also reports the student's next-token cross-entropy on the
    window itself (the held-out perplexity)."""

    kind = "language model: KL divergence to the teacher's next-token distribution"

    def __init__(self, teacher: onnx.ModelProto | str, student: onnx.ModelProto, *, temperature: float = 1.0,
                 threads: int | None = None):
        self.teacher = open_session(teacher, threads=threads)
        self.teacher_specs = {i.name: i for i in self.teacher.get_inputs()}
        self.student_specs = _input_specs(student)
        if "input_ids" not in self.student_specs or "input_ids" not in self.teacher_specs:
            raise UnsupportedModelError("heal: a language model needs an input_ids input (teacher and student)")
        if "logits" not in [o.name for o in self.teacher.get_outputs()]:
            raise UnsupportedModelError("heal: the teacher has no 'logits' output (an optimum causal-LM export)")
        self.logits_index = _logits_output(student)
        self.temperature = temperature

    def teacher_logits(self, tokens: np.ndarray) -> np.ndarray:
        """[batch, seq, vocabulary] float32 logits of the teacher on TOKENS."""
        specs = {name: _ShapeOnly(spec.shape) for name, spec in self.teacher_specs.items()}
        return self.teacher.run(["logits"], model_feeds(specs, tokens))[0].astype(np.float32, copy=False)

    def student_args(self, torch, tokens: np.ndarray) -> list:
        """The student module's positional inputs (graph order) for TOKENS."""
        feeds = model_feeds(self.student_specs, tokens)
        return [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.student_specs]

    def student_logits(self, outputs):
        return outputs[self.logits_index] if isinstance(outputs, (list, tuple)) else outputs

    def loss(self, torch, logits, teacher_logits):
        """Mean per-token KL(teacher || student) at the temperature."""
        t = self.temperature
        student = torch.log_softmax(logits.float() / t, dim=-1)
        teacher = torch.log_softmax(torch.from_numpy(teacher_logits) / t, dim=-1)
        # Sum over the vocabulary (last axis), mean over batch and positions.
        kl = (teacher.exp() * (teacher - student)).sum(dim=-1).mean()
        return kl * (t * t)

    @staticmethod
    def next_token_nll(torch, logits, tokens: np.ndarray) -> tuple[float, int]:
        """(summed NLL, count) of each next token of TOKENS under LOGITS: position i predicts token i + 1."""
        target = torch.from_numpy(tokens[:, 1:]).reshape(-1)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target,
                                                reduction="sum")
        return float(nll), int(target.numel())


class _ShapeOnly:
    """What `model_feeds` reads of an input spec: its shape (ORT's NodeArg shape, names for dynamic axes)."""

    def __init__(self, shape):
        self.shape = shape
