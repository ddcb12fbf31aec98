"""Gradient checkpointing when memory asks for it (`--grad-checkpoint auto`, the default).

Before training, one forward pass of a single held-out row is run with autograd on, and the bytes autograd
saves for the backward pass are summed (`torch.autograd.graph.saved_tensors_hooks`, each storage once, the
model's own weights left out): that is the activation memory of one row, and a step of BATCH rows needs
about BATCH times it. The budget is the memory the device still has (psutil and RLIMIT_AS on the CPU,
`torch.cuda.mem_get_info` on a GPU), less what the first optimiser step will allocate (a gradient and
AdamW's two moments per trained value) and a safety share. When the step needs more than the budget, the
forward pass is checkpointed (`recompute.Checkpointed`) in enough segments that about one segment's
activations, plus the values crossing the cuts, fit: segments = ceil(2 x need / budget), at least 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CheckpointChoice", "activation_bytes", "choose_checkpointing", "device_budget"]

#: Share of the free memory the activations may take (the rest: the teacher's outputs, the loss, the allocator).
SAFE_SHARE = 0.6
#: Bytes the first optimiser step adds per trained float32 value: its gradient and AdamW's two moments.
OPTIMISER_BYTES = 3 * 4
#: Segments at most (beyond a few per layer, the cut values dominate and recomputation gains nothing).
MAX_SEGMENTS = 256


@dataclass
class CheckpointChoice:
    """What `choose_checkpointing` decided, for the plan."""

    segments: int  # 0: off
    mode: str  # "auto" or "fixed"
    step_activation_bytes: int | None = None  # the estimate for one step (auto only)
    budget_bytes: int | None = None

    def record(self) -> dict:
        return {"segments": self.segments, "mode": self.mode, "step_activation_bytes": self.step_activation_bytes,
                "budget_bytes": self.budget_bytes}


def activation_bytes(torch, module, run_forward) -> int:
    """Bytes autograd keeps for the backward pass while RUN_FORWARD() runs: the distinct storages of the saved
    tensors, MODULE's parameters and buffers (held anyway) left out. The forward's outputs are dropped."""
    held = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    saved: dict[tuple, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), str(tensor.device))
        if storage.data_ptr() not in held:
            saved[key] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = run_forward()
    del output
    return sum(saved.values())


def device_budget(torch, device: str) -> int:
    """Bytes free for training on DEVICE."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    from ..graph.validate import available_memory

    return available_memory()


def choose_checkpointing(student, objective, probe, batch: int, requested: int | None) -> CheckpointChoice:
    """The number of checkpointed segments for training STUDENT in batches of BATCH rows: REQUESTED when given
    (0: off), else the automatic choice of the module doc, measured on PROBE (one held-out row)."""
    if requested is not None:
        return CheckpointChoice(requested, "fixed")
    torch = student.torch
    per_row = activation_bytes(torch, student.module, lambda: objective.output(torch, student.module, probe))
    need = per_row * batch
    free = device_budget(torch, student.device) - OPTIMISER_BYTES * student.trainable_count()
    budget = max(int(free * SAFE_SHARE), 1)
    segments = 0 if need <= budget else min(MAX_SEGMENTS, max(2, math.ceil(2 * need / budget)))
    return CheckpointChoice(segments, "auto", need, budget)
