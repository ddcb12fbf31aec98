"""The evaluators `onnxdepth sweep` can run, by task name, behind one call.

A task is registered with one decorator call::

    @register_task("multiple-choice", metric="accuracy", higher_is_better=True, random=0.25,
                   required=("data",), label="accuracy")
    def _multiple_choice(model_path, *, reference, options):
        return {"accuracy": ..., "questions": ...}

The evaluator gets the model's path, the unpruned model's path as ``reference`` (None when there is
none) and the options dict (``text``, ``ctx``, ``data``, ``limit``, ``threads``, ... whatever the
command line gave; absent options are missing keys). It returns a JSON-able dict that holds the
headline number under ``metric``. ``random`` is the random-guess score drawn as a dashed line in the
sweep plots: a number, or a function ``(model_path, options) -> float | None`` when it depends on the
model (perplexity: the vocabulary size).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import InvalidArgumentError, ModelLoadError

__all__ = ["Task", "register_task", "get_task", "task_names", "check_options", "evaluate", "random_line"]

Evaluator = Callable[..., dict]
RandomLine = float | Callable[[Path, Mapping[str, Any]], float | None] | None

_TASKS: dict[str, "Task"] = {}


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # key of the headline number in the evaluator's result
    higher_is_better: bool
    evaluator: Evaluator
    random: RandomLine = None
    log_scale: bool = False  # plot on a log axis (perplexity)
    needs_reference: bool = False  # compares against the unpruned model (detection fidelity)
    required: tuple[str, ...] = ()  # options that must be given, e.g. ("text",)
    label: str = ""  # axis label; defaults to the metric

    def describe(self) -> dict:
        """What a report needs to draw this task without the registry (stored in sweep.json)."""
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "log_scale": self.log_scale,
                "label": self.label or self.metric}


def register_task(name: str, *, metric: str, higher_is_better: bool, random: RandomLine = None,
                  log_scale: bool = False, needs_reference: bool = False, required: tuple[str, ...] = (),
                  label: str = "", replace: bool = False) -> Callable[[Evaluator], Evaluator]:
    """Decorator: register the function as the evaluator of task NAME (see the module docstring)."""

    def decorate(evaluator: Evaluator) -> Evaluator:
        if name in _TASKS and not replace:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = Task(name, metric, higher_is_better, evaluator, random, log_scale, needs_reference,
                            tuple(required), label)
        return evaluator

    return decorate


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError as exc:
        raise InvalidArgumentError(f"--eval {name}: unknown task (available: {', '.join(task_names())})") from exc


def check_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Raise InvalidArgumentError when an option task NAME needs is missing (before any work is done)."""
    task = get_task(name)
    missing = [key for key in task.required if (options or {}).get(key) in (None, "")]
    if missing:
        flags = ", ".join("--" + key.replace("_", "-") for key in missing)
        raise InvalidArgumentError(f"--eval {name}: needs {flags}")


def evaluate(task: str, model_path: str | os.PathLike, *, reference: str | os.PathLike | None = None,
             options: Mapping[str, Any] | None = None) -> dict:
    """Run task TASK on MODEL_PATH. Returns the evaluator's dict plus ``task``, ``metric`` and ``value``
    (the headline number as a float; None when the evaluator gave NaN, e.g. a reference that detects nothing)."""
    spec = get_task(task)
    options = dict(options or {})
    check_options(task, options)
    if spec.needs_reference and reference is None:
        raise InvalidArgumentError(f"--eval {task}: needs the unpruned model as reference")
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    result = dict(spec.evaluator(path, reference=Path(reference) if reference is not None else None,
                                 options=options))
    if spec.metric not in result:
        raise KeyError(f"task {task}: the evaluator returned no {spec.metric!r}")  # a bug in the evaluator
    value = result[spec.metric]
    value = None if value is None or not math.isfinite(float(value)) else float(value)
    return {**result, "task": task, "metric": spec.metric, "value": value}


def random_line(task: str, model_path: str | os.PathLike, options: Mapping[str, Any] | None = None) -> float | None:
    """The random-guess score of TASK for this model (None when it has none)."""
    spec = get_task(task)
    if callable(spec.random):
        return spec.random(Path(model_path), dict(options or {}))
    return None if spec.random is None else float(spec.random)


# ------------------------------------------------------------------------------------------ perplexity

def _vocabulary_size(model_path: Path, options: Mapping[str, Any]) -> float | None:
    """A uniform guess over the vocabulary has perplexity V: V is the last dim of the logits output."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (OSError, DecodeError):  # an unreadable model gets no line (evaluating it reports the error)
        return None
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name == "logits" or len(model.graph.output) == 1:
            if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0:
                return float(dims[-1].dim_value)
    return None


def _tokenizer_dir(model_path: Path, reference: Path | None, options: Mapping[str, Any]) -> Path:
    """--tokenizer, else the model's directory, else the unpruned model's (pruned models sit elsewhere)."""
    from ..tokenizer_io import has_tokenizer

    if options.get("tokenizer"):
        return Path(options["tokenizer"])
    for candidate in (model_path, reference):
        if candidate is not None and has_tokenizer(candidate.resolve().parent):
            return candidate.resolve().parent
    return model_path.resolve().parent  # load_text_tokens then says no tokenizer was found there


@functools.lru_cache(maxsize=4)
def _text_tokens(text: str, tokenizer_dir: str, max_tokens: int | None):
    """Tokenized once per sweep, not once per point."""
    from .perplexity import load_text_tokens

    return load_text_tokens(text, tokenizer_dir, max_tokens)


@register_task("perplexity", metric="perplexity", higher_is_better=False, random=_vocabulary_size, log_scale=True,
               required=("text",), label="perplexity")
def _perplexity(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    from .perplexity import perplexity

    if options.get("tokenizer") and not Path(options["tokenizer"]).is_dir():
        raise InvalidArgumentError(f"--tokenizer {options['tokenizer']}: no such directory")
    tokens = _text_tokens(str(options["text"]), str(_tokenizer_dir(model_path, reference, options)),
                          options.get("max_tokens"))
    return perplexity(str(model_path), tokens, ctx=int(options.get("ctx") or 512), stride=options.get("stride"),
                      threads=options.get("threads"), progress=False)


# ------------------------------------------------------------------------------------------- detection

@functools.lru_cache(maxsize=2)
def _images(count: int, size: int) -> tuple:
    from .detection import reference_images

    return tuple(reference_images(count, size))


@register_task("detection", metric="map50", higher_is_better=True, random=0.0, needs_reference=True,
               label="fidelity mAP50")
def _detection(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    from .detection import fidelity_map

    images = _images(int(options.get("images") or 24), int(options.get("imgsz") or 320))
    return fidelity_map(str(model_path), str(reference), images, threads=options.get("threads"))


# ------------------------------------------------------------------ evaluators in their own modules
# Registered only when the module imports and has its entry point, so that the sweep keeps working
# while one of them is missing or being rewritten. Each adapter maps the sweep's options onto the
# evaluator's arguments; pruned models sit in the sweep's models/ folder, so the tokenizer is looked
# up beside the unpruned model as well.

def _optional(module: str, entry: str):
    import importlib

    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), entry, None)
    except ImportError:
        return None


def _samples(options: Mapping[str, Any]) -> int | None:
    value = options.get("samples", options.get("limit"))
    return None if value is None else int(value)


def _register_multiple_choice() -> None:
    evaluate_multiple_choice = _optional("multiple_choice", "evaluate_multiple_choice")
    if evaluate_multiple_choice is None:
        return

    def adapter(style: str) -> Evaluator:
        def run(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
            return evaluate_multiple_choice(
                str(model_path), options["data"], dev=options.get("dev"), shots=int(options.get("shots") or 0),
                scoring=style, limit=options.get("limit"), max_length=options.get("max_length"),
                tokenizer_dir=str(_tokenizer_dir(model_path, reference, options)), threads=options.get("threads"),
                progress=False)
        return run

    # MMLU's standard letter scoring (the thesis's Figures 4.1 / 4.2) and cloze scoring (answer texts);
    # four choices: a random guess scores 0.25.
    for name, style in (("multiple-choice", "letter"), ("multiple-choice-cloze", "cloze")):
        register_task(name, metric=f"{style}_accuracy", higher_is_better=True, random=0.25, required=("data",),
                      label=f"accuracy ({style})")(adapter(style))


def _register_ocr() -> None:
    evaluate_ocr = _optional("ocr", "evaluate_ocr")
    if evaluate_ocr is None:
        return

    @register_task("ocr", metric="score", higher_is_better=True, random=0.0,
                   label="OCR score (rec: character accuracy, det: F1)")
    def _ocr(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
        result = evaluate_ocr(str(model_path), kind=options.get("ocr_kind"), samples=_samples(options),
                              seed=int(options.get("seed") or 0), threads=options.get("threads"))
        # one headline for both model kinds: recognition's character accuracy, detection's F1
        return {**result, "score": result["char_accuracy"] if result.get("kind") == "rec" else result["f1"]}


def _register_embedding() -> None:
    embedding_similarity = _optional("embedding", "embedding_similarity")
    if embedding_similarity is None:
        return

    @register_task("embedding", metric="cosine", higher_is_better=True, needs_reference=True,
                   label="cosine similarity to the unpruned embeddings")
    def _embedding(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
        extra = {"samples": _samples(options)} if _samples(options) is not None else {}
        return embedding_similarity(str(model_path), str(reference), text_file=options.get("text"),
                                    tokenizer_dir=options.get("tokenizer"), threads=options.get("threads"), **extra)


_register_multiple_choice()
_register_ocr()
_register_embedding()
