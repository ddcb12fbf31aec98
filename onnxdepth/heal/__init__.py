"""Healing: distil a pruned ONNX model from the unpruned one through the PyTorch sidecar and write the weights
back (`onnxdepth heal PRUNED OUT --teacher UNPRUNED`).

The pruned graph is converted to a PyTorch module (`student`), trained against the teacher (`objectives`) on
text windows (`data`) by `loop`, and its changed initializers are written into a copy of the pruned graph: the
same nodes, the same inputs and outputs, new weights. The output is verified like every output (the full
checker on the written file, an ONNX Runtime run, the signature of PRUNED), and its plan (PRUNED's, if it has
one) records the run: steps, data, loss curves, the best held-out step.

The loss follows the kind of model: KL to the teacher's next-token distribution for causal LMs, cosine to its
embeddings for sentence encoders, and distillation on the raw outputs of detectors and PP-OCR models
(`objectives`, `distill`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from onnx import numpy_helper

from ..errors import InvalidArgumentError, UnsupportedModelError
from .loop import HealConfig, HealRun, run_healing

__all__ = ["HealConfig", "HealRun", "heal_file", "heal_model", "with_initializers"]

logger = logging.getLogger(__name__)


def _is_language_model(model: onnx.ModelProto) -> bool:
    inputs = {v.name for v in model.graph.input}
    return "input_ids" in inputs and "logits" in {o.name for o in model.graph.output}


def heal_model(pruned: onnx.ModelProto, teacher_path: str, config: HealConfig, *, checkpoint: str | None = None,
               resume: bool = False, progress: bool = True, on_check=None) -> tuple[onnx.ModelProto, dict]:
    """PRUNED with healed initializers, and the plan record of the run (`healing`). ON_CHECK(run, student):
    see `loop.run_healing`; `with_initializers(pruned, student.updated_initializers())` is the model then."""
    from .memory import choose_checkpointing
    from .student import Student

    device = config.torch_device()
    objective, windows = _objective_and_data(pruned, teacher_path, config)
    objective.device = device
    student = Student(pruned, lora_rank=config.lora_rank, device=device)
    checkpointing = choose_checkpointing(student, objective, windows.held_out_batches(1)[0], config.batch,
                                         config.checkpoint_segments)
    if checkpointing.segments:
        student.checkpoint(checkpointing.segments)
        logger.info("heal: the forward pass checkpointed in %d segments (%s)", checkpointing.segments,
                    "chosen for memory" if checkpointing.mode == "auto" else "--grad-checkpoint")
    logger.info("heal: %s trainable values (%s), %s", f"{student.trainable_count():,}",
                f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tuning", windows.source)
    run = run_healing(student, objective, windows, config, checkpoint=checkpoint, resume=resume, progress=progress,
                      on_check=on_check)
    healed = with_initializers(pruned, student.updated_initializers() if run.best_step else {})
    record = {"teacher": str(teacher_path), "objective": objective.kind, "metric": objective.metric, "data": windows.source,
              "mode": f"lora rank {config.lora_rank}" if config.lora_rank else "full fine-tuning", "device": device,
              "trainable_values": student.trainable_count(),
              "options": {k: getattr(config, k) for k in ("steps", "batch", "seq_len", "lora_rank", "eval_every",
                                                          "held_out", "max_minutes", "warmup", "weight_decay",
                                                          "temperature", "label_weight", "seed",
                                                          "sampled")}
              | {"lr": config.learning_rate, "checkpoint_segments": checkpointing.segments},
              "checkpointing": checkpointing.record(),
              **run.record()}
    return healed, record


def _objective_and_data(pruned: onnx.ModelProto, teacher_path: str, config: HealConfig):
    """What to minimise and on what, by the kind of model: a causal LM (KL on text windows), a sentence encoder
    (cosine on sentences) or a one-image-input model (detector / OCR losses on images; `distill`)."""
    from .data import text_windows
    from .distill import OutputDistillation
    from .inputs import encoder_inputs, image_inputs
    from .objectives import LMDistillation

    wanted = config.steps * config.batch
    if _is_language_model(pruned):
        objective = LMDistillation(teacher_path, pruned, temperature=config.temperature,
                                   label_weight=config.label_weight, threads=config.threads)
        return objective, text_windows(config.calib, teacher_path, seq_len=config.seq_len, held_out=config.held_out,
                                       wanted=wanted, seed=config.seed, sampled=config.sampled)
    if config.sampled:
        raise InvalidArgumentError("heal --sampled: text sampled from the teacher is for language models only (this "
                                   "model has no logits output to sample from)")
    if "input_ids" in {v.name for v in pruned.graph.input}:
        data = encoder_inputs(pruned, teacher_path, config.calib, count=wanted, held_out=config.held_out,
                              seq_len=config.seq_len)
    else:
        data = image_inputs(pruned, config.calib, count=wanted, held_out=config.held_out, seed=config.seed)
    try:
        objective = OutputDistillation(teacher_path, pruned, data.held_out[0], threads=config.threads)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"heal: {exc}".replace("--importance taylor: ", "")) from exc
    return objective, data


def with_initializers(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of MODEL with the initializers named in VALUES replaced (inline; the rest as they were)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return out


def heal_file(pruned: str | os.PathLike, out: str | os.PathLike, teacher: str | os.PathLike, config: HealConfig, *,
              resume: bool = False, progress: bool = True, in_place: bool = False) -> dict:
    """Heal the model at PRUNED against TEACHER, write OUT (verified) and OUT's plan; returns the plan.
    IN_PLACE: OUT may be PRUNED itself (`prune --heal-steps`)."""
    from ..api import plan_metadata, plan_path_for, write_plan_metadata
    from ..fileio import write_json_atomic
    from ..graph.io import check_output_path, load_model, save_model_atomic
    from ..verify import written_file_check

    out = check_output_path(out, None if in_place else pruned)
    if not Path(teacher).is_file():
        raise InvalidArgumentError(f"--teacher {teacher}: no such file")
    model = load_model(pruned)
    plan = plan_metadata(model) or {}
    checkpoint = str(Path(out).with_name(Path(out).stem + ".heal.pt"))
    healed, record = heal_model(model, str(teacher), config, checkpoint=checkpoint, resume=resume, progress=progress)
    plan = {**plan, "healing": record}
    write_plan_metadata(healed, plan)
    save_model_atomic(healed, out, check=written_file_check(pruned, {}))
    write_json_atomic(plan_path_for(Path(out)), plan)
    if record["stopped_by"] == "steps" and os.path.exists(checkpoint):
        os.unlink(checkpoint)  # every step done: nothing to resume (kept after an interrupt or --max-minutes)
    return plan
