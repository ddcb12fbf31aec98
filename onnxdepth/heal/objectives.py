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
    metric = "perplexity"

    def __init__(self, teacher: onnx.ModelProto | str, student: onnx.ModelProto, *, temperature: float = 1.0,
                 label_weight: float = 0.0, threads: int | None = None):
        self.teacher = open_session(teacher, threads=threads)
        self.teacher_specs = {i.name: i for i in self.teacher.get_inputs()}
        self.student_specs = _input_specs(student)
        if "input_ids" not in self.student_specs or "input_ids" not in self.teacher_specs:
            raise UnsupportedModelError("heal: a language model needs an input_ids input (teacher and student)")
        if "logits" not in [o.name for o in self.teacher.get_outputs()]:
            raise UnsupportedModelError("heal: the teacher has no 'logits' output (an optimum causal-LM export)")
        self.logits_index = _logits_output(student)
        self.temperature = temperature
        self.label_weight = label_weight  # the weight of the next-token cross-entropy on the text itself
        self.device = "cpu"  # where the student's tensors live (the loop sets it); the teacher runs in ORT

    def teacher_logits(self, tokens: np.ndarray) -> np.ndarray:
        """[batch, seq, vocabulary] float32 logits of the teacher on TOKENS."""
        specs = {name: _ShapeOnly(spec.shape) for name, spec in self.teacher_specs.items()}
        return self.teacher.run(["logits"], model_feeds(specs, tokens))[0].astype(np.float32, copy=False)

    def student_args(self, torch, tokens: np.ndarray) -> list:
        """The student module's positional inputs (graph order) for TOKENS."""
        feeds = model_feeds(self.student_specs, tokens)
        return [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in self.student_specs]

    def student_logits(self, outputs):
        return outputs[self.logits_index] if isinstance(outputs, (list, tuple)) else outputs

    # -- the protocol `loop` trains with: a batch is a [batch, seq] token array --
    def targets(self, tokens: np.ndarray) -> np.ndarray:
        return self.teacher_logits(tokens)

    def output(self, torch, module, tokens: np.ndarray):
        return self.student_logits(module(*self.student_args(torch, tokens)))

    def evaluate(self, torch, module, batches: list, targets: list) -> tuple[float, float]:
        """(mean KL over the held-out windows, the student's perplexity on them)."""
        import math

        total_kl, nll, count, windows = 0.0, 0.0, 0, 0
        for tokens, target in zip(batches, targets):
            logits = self.output(torch, module, tokens)
            total_kl += float(self.loss(torch, logits, target)) * len(tokens)  # the KL alone (no tokens)
            batch_nll, batch_count = self.next_token_nll(torch, logits, tokens)
            nll, count, windows = nll + batch_nll, count + batch_count, windows + len(tokens)
        mean_nll = nll / max(count, 1)
        return total_kl / max(windows, 1), math.exp(mean_nll) if mean_nll < 700 else math.inf  # exp overflows

    def loss(self, torch, logits, teacher_logits, tokens=None):
        """Mean per-token KL(teacher || student) at the temperature, plus LABEL_WEIGHT x the next-token
        cross-entropy on TOKENS when asked (the held-out check measures the KL alone)."""
        t = self.temperature
        student = torch.log_softmax(logits.float() / t, dim=-1)
        teacher = torch.log_softmax(torch.from_numpy(teacher_logits).to(logits.device) / t, dim=-1)
        # Sum over the vocabulary (last axis), mean over batch and positions.
        kl = (teacher.exp() * (teacher - student)).sum(dim=-1).mean() * (t * t)
        if not self.label_weight or tokens is None:
            return kl
        nll, count = self.next_token_nll(torch, logits, tokens, keep_graph=True)
        return kl + self.label_weight * nll / count

    @staticmethod
    def next_token_nll(torch, logits, tokens: np.ndarray, keep_graph: bool = False) -> tuple:
        """(summed NLL, count) of each next token of TOKENS under LOGITS: position i predicts token i + 1. KEEP_GRAPH:
        the NLL as a tensor to back-propagate through, else a float."""
        target = torch.from_numpy(np.ascontiguousarray(tokens[:, 1:])).reshape(-1).to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target,
                                                reduction="sum")
        return (nll if keep_graph else float(nll)), int(target.numel())


class _ShapeOnly:
    """What `model_feeds` reads of an input spec: its shape (ORT's NodeArg shape, names for dynamic axes)."""

    def __init__(self, shape):
        self.shape = shape
