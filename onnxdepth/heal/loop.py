"""The healing loop: AdamW on the student's trainable tensors against the teacher, held-out checks, the best
checkpoint kept (step 0, the input model, included: healing never returns a model worse on the held-out check
than its input), a wall-clock budget, Ctrl-C, and a resumable checkpoint file."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from ..runtime import progress as progress_bar
from ..allocator import reuse_freed_memory

__all__ = ["HealConfig", "HealRun", "run_healing"]

logger = logging.getLogger(__name__)


@dataclass
class HealConfig:
    """Options of one healing run (the CLI's `heal` flags)."""

    steps: int = 200
    lr: float | None = None  # None: 1e-4 for full fine-tuning, 1e-3 with LoRA
    batch: int = 4
    seq_len: int = 128
    lora_rank: int = 0
    eval_every: int = 25
    held_out: int = 16
    max_minutes: float | None = None
    warmup: int = 10
    weight_decay: float = 0.0
    temperature: float = 1.0
    label_weight: float = 0.0  # language models: weight of the next-token cross-entropy on the text beside the KL
    seed: int = 0
    calib: str | None = None
    sampled: int = 0  # windows sampled from the teacher: the data without calib (0: the default count), else mixed in
    threads: int | None = None
    device: str = "auto"  # where the student trains: "cpu", "cuda", or "auto" (CUDA when torch sees a GPU)
    checkpoint_segments: int | None = None  # gradient checkpointing: the forward recomputed in this many runs
    # (0: off; None: automatic, when a step's activations would not fit in memory: `memory`)

    def __post_init__(self) -> None:
        for flag, value in (("--steps", self.steps), ("--batch", self.batch), ("--seq-len", self.seq_len),
                            ("--eval-every", self.eval_every), ("--held-out", self.held_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{flag} {value!r}: must be a positive integer")
        if self.seq_len < 2:
            raise InvalidArgumentError(f"--seq-len {self.seq_len}: needs at least 2 tokens (one to predict)")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise InvalidArgumentError(f"--lora-rank {self.lora_rank!r}: must be 0 (full fine-tuning) or more")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"--lr {self.lr!r}: must be a positive number")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise InvalidArgumentError(f"--max-minutes {self.max_minutes!r}: must be a positive number")
        if not (math.isfinite(self.label_weight) and self.label_weight >= 0):
            raise InvalidArgumentError(f"--label-weight {self.label_weight!r}: must be a number >= 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidArgumentError(f"--temperature {self.temperature!r}: must be a positive number")
        if isinstance(self.sampled, bool) or not isinstance(self.sampled, int) or self.sampled < 0:
            raise InvalidArgumentError(f"--sampled {self.sampled!r}: must be 0 or a positive number of windows")
        if self.checkpoint_segments is not None and (isinstance(self.checkpoint_segments, bool)
                                                     or not isinstance(self.checkpoint_segments, int)
                                                     or self.checkpoint_segments < 0):
            raise InvalidArgumentError(f"--grad-checkpoint {self.checkpoint_segments!r}: must be 0 (off), a "
                                       "positive number of segments, or auto")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidArgumentError(f"--device {self.device!r}: must be auto, cpu or cuda")

    def torch_device(self) -> str:
        """The device the student trains on: DEVICE, with "auto" resolved (CUDA when torch sees a GPU);
        ProviderUnavailableError for "cuda" on a machine without one."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            from ..runtime import ProviderUnavailableError

            raise ProviderUnavailableError("--device cuda: torch sees no GPU (torch.cuda.is_available() is False; "
                                           "a CPU-only torch wheel, or no driver)")
        return self.device

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora_rank else 1e-4)


@dataclass
class HealRun:
    """What a run did: the loss curve, the held-out checks and the best step (written into the plan)."""

    steps_done: int = 0
    best_step: int = 0
    best_held_out: float | None = None
    interrupted: bool = False
    stopped_by: str = "steps"
    seconds: float = 0.0
    train_curve: list = field(default_factory=list)  # [step, seconds, training loss]
    held_out_curve: list = field(default_factory=list)  # [step, seconds, held-out loss, the objective's metric]

    def record(self) -> dict:
        return {"steps_done": self.steps_done, "best_step": self.best_step, "best_held_out_loss": self.best_held_out,
                "interrupted": self.interrupted, "stopped_by": self.stopped_by, "seconds": round(self.seconds, 1),
                "train_curve": self.train_curve, "held_out_curve": self.held_out_curve}


def _lr_at(step: int, config: HealConfig, elapsed: float) -> float:
    """Linear warm-up over WARMUP steps, then cosine decay to a tenth over the remaining steps, or, with
    --max-minutes, over the remaining time if that runs out first (ELAPSED: seconds trained so far)."""
    base = config.learning_rate
    if step < config.warmup:
        return base * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    if config.max_minutes:
        progress = max(progress, elapsed / (config.max_minutes * 60))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _held_out(student, objective, batches: list, targets: list) -> tuple[float, float | None]:
    """(mean held-out loss, the objective's metric) of the student on BATCHES (TARGETS: the teacher's outputs)."""
    torch = student.torch
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnx2torch's Slice indexes with a list
        return objective.evaluate(torch, student.module, batches, targets)


def run_healing(student, objective, data, config: HealConfig, *, checkpoint: str | None = None,
                resume: bool = False, progress: bool = True, on_check=None) -> HealRun:
    """Train STUDENT (`student.Student`) on DATA (`data.TextWindows`, `inputs.InputBatches`: train_batches,
    held_out_batches, source) against OBJECTIVE's teacher (`objectives`: targets, output, loss, evaluate); the student
    ends holding the best held-out weights. CHECKPOINT: a file the state is saved to at every held-out check
    (and read from with RESUME). ON_CHECK(run, student): called after every held-out check (tools take
    snapshots there)."""
    torch = student.torch
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0))))
    try:
        # On the CPU, freed tensors stay in the heap for the next step (`allocator`: 1.8x faster steps on SmolLM2).
        with reuse_freed_memory(getattr(student, "device", "cpu") == "cpu"):
            return _train(student, objective, data, config, checkpoint, resume, progress, on_check)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again (a library call must not change it)


def _train(student, objective, data, config: HealConfig, checkpoint, resume: bool, progress: bool,
           on_check) -> HealRun:
    torch = student.torch
    torch.manual_seed(config.seed)
    parameters = student.parameters()
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    held_batches = data.held_out_batches(config.batch)
    held = (held_batches, [objective.targets(batch) for batch in held_batches])
    run = HealRun()
    first = 0
    if resume and checkpoint and os.path.exists(checkpoint):
        first, best_state = _load_checkpoint(torch, checkpoint, student, optimiser, run)
        logger.info("resumed at step %d (best so far: step %d, held-out loss %.4f)", first, run.best_step,
                    run.best_held_out)
    else:
        kl, ppl = _held_out(student, objective, *held)
        run.held_out_curve.append([0, 0.0, kl, ppl])
        run.best_held_out, best_state = kl, student.state()
        logger.info("step 0: held-out loss %.4f, %s %s", kl, objective.metric, ppl)
    batches = data.train_batches(config.batch, config.seed)
    for _ in range(first):  # the same batch order as an uninterrupted run
        next(batches)
    started = time.perf_counter() - run.seconds
    deadline = started + config.max_minutes * 60 if config.max_minutes else None
    step = first
    with progress_bar(config.steps - first, "heal", progress) as bar:
        try:
            for step in range(first, config.steps):
                if deadline is not None and time.perf_counter() >= deadline:
                    run.stopped_by = "max-minutes"
                    break
                batch = next(batches)
                target = objective.targets(batch)
                for group in optimiser.param_groups:
                    group["lr"] = _lr_at(step, config, time.perf_counter() - started)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    output = objective.output(torch, student.module, batch)
                loss = objective.loss(torch, output, target, batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimiser.step()
                run.steps_done = step + 1
                value = float(loss.detach())
                del output, loss, target
                if not math.isfinite(value):  # diverged (the learning rate): the weights are lost from here on
                    logger.warning("step %d: the loss is %s; stopping (try a smaller --lr)", step + 1, value)
                    run.stopped_by = "diverged"
                    break
                run.train_curve.append([step + 1, round(time.perf_counter() - started, 1), value])
                bar.advance(note=f"loss {value:.4f}")
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    best_state = _check(student, objective, held, run, step + 1, started, best_state)
                    if on_check is not None:
                        on_check(run, student)
                    if checkpoint:
                        run.seconds = time.perf_counter() - started
                        _save_checkpoint(torch, checkpoint, student, optimiser, run, step + 1, best_state)
        except KeyboardInterrupt:
            run.interrupted, run.stopped_by = True, "interrupt"
            logger.warning("interrupted at step %d: keeping the best weights so far (step %d)", run.steps_done,
                           run.best_step)
    if run.stopped_by not in ("interrupt", "diverged") and run.held_out_curve[-1][0] != run.steps_done:
        best_state = _check(student, objective, held, run, run.steps_done, started,
                            best_state)  # the last steps since the previous check
        if checkpoint and run.stopped_by == "max-minutes":  # stopped between two steps: --resume goes on from here
            run.seconds = time.perf_counter() - started
            _save_checkpoint(torch, checkpoint, student, optimiser, run, run.steps_done, best_state)
    run.seconds = time.perf_counter() - started
    student.load_state(best_state)
    return run


def _check(student, objective, held: tuple, run: HealRun, step: int, started: float, best_state: dict) -> dict:
    kl, ppl = _held_out(student, objective, *held)
    # JSON has no infinity: an overflowing perplexity is recorded as null.
    run.held_out_curve.append([step, round(time.perf_counter() - started, 1), kl,
                               ppl if ppl is None or math.isfinite(ppl) else None])
    logger.info("step %d: held-out loss %.4f, %s %s", step, kl, objective.metric, ppl)
    if kl < run.best_held_out:
        run.best_held_out, run.best_step = kl, step
        return student.state()
    return best_state


def _save_checkpoint(torch, path: str, student, optimiser, run: HealRun, step: int, best_state: dict) -> None:
    from ..fileio import write_atomic
    import io

    buffer = io.BytesIO()
    torch.save({"step": step, "current": student.state(), "best": best_state, "optimiser": optimiser.state_dict(),
                "run": run.record()}, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(torch, path: str, student, optimiser, run: HealRun) -> tuple[int, dict]:
    try:
        saved = torch.load(path, weights_only=True, map_location=getattr(student, "device", "cpu"))
        student.load_state(saved["current"])
        optimiser.load_state_dict(saved["optimiser"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InvalidArgumentError(f"--resume: {path} is not a checkpoint of this healing run ({exc})") from exc
    record = saved["run"]
    run.steps_done, run.best_step, run.best_held_out = record["steps_done"], record["best_step"], record["best_held_out_loss"]
    run.train_curve, run.held_out_curve, run.seconds = record["train_curve"], record["held_out_curve"], record["seconds"]
    return saved["step"], saved["best"]
