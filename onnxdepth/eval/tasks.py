"""The evaluation tasks, by name: the one entry point of `onnxdepth eval`, `onnxdepth sweep` and the report.

A task is registered with one decorator call::

    @register_task("multiple-choice", metric="accuracy", higher_is_better=True, random=0.25,
                   required=("data",), label="accuracy", summarize=_mc_summary)
    def _multiple_choice(model_path, *, reference, options):
        return {"accuracy": ..., "questions": ...}

The evaluator gets the model's path, the unpruned model's path as ``reference`` (None when there is
none) and the options dict (``text``, ``ctx``, ``data``, ``limit``, ``threads``, ``progress``, ...
whatever the command line gave; absent options are missing keys or None). It returns a JSON-able dict
that holds the headline number under ``metric``. ``random`` is the random-guess score drawn as a dashed
line in the sweep plots: a number, or a function ``(model_path, options) -> float | None`` when it
depends on the model (perplexity: the vocabulary size). ``summarize(result) -> (summary, line)`` is what
`onnxdepth eval` prints: the JSON object of ``--json``, or the one line. ``required`` options and the
reference (``needs_reference``; ``reference_unless`` names an option that stands in for it) are checked
before any work is done.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import InvalidArgumentError, ModelLoadError

__all__ = ["Task", "register_task", "get_task", "task_names", "check_options", "evaluate", "random_line",
           "summarize"]

Evaluator = Callable[..., dict]
RandomLine = float | Callable[[Path, Mapping[str, Any]], float | None] | None
Summarizer = Callable[[dict], tuple[dict, str]]

_TASKS: dict[str, "Task"] = {}


def _keys_summary(*keys: str) -> Callable[[dict], dict]:
    """A summary of the result's KEYS that it holds (after ``task``)."""
    return lambda result: {key: result[key] for key in ("task", *keys) if key in result}


def _default_summary(task: "Task") -> Summarizer:
    def summarize(result: dict) -> tuple[dict, str]:
        value = result.get("value")
        return _keys_summary(task.metric)(result), f"{task.name}: {task.label or task.metric} " + \
            ("n/a" if value is None else f"{value:.4f}")
    return summarize


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
    reference_unless: str = ""  # an option that replaces the reference (detection: labelled images)
    summarize: Summarizer | None = None  # result -> (JSON summary, one line); default: the metric
    random_note: str = ""  # what the random-guess score is, when it depends on the model

    def describe(self) -> dict:
        """What a report needs to draw this task without the registry (stored in sweep.json)."""
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "log_scale": self.log_scale,
                "label": self.label or self.metric}


def register_task(name: str, *, metric: str, higher_is_better: bool, random: RandomLine = None,
                  log_scale: bool = False, needs_reference: bool = False, required: tuple[str, ...] = (),
                  label: str = "", reference_unless: str = "", summarize: Summarizer | None = None,
                  random_note: str = "", replace: bool = False) -> Callable[[Evaluator], Evaluator]:
    """Decorator: register the function as the evaluator of task NAME (see the module docstring)."""

    def decorate(evaluator: Evaluator) -> Evaluator:
        if name in _TASKS and not replace:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = Task(name, metric, higher_is_better, evaluator, random, log_scale, needs_reference,
                            tuple(required), label, reference_unless, summarize, random_note)
        return evaluator

    return decorate


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, flag: str = "--eval") -> Task:
    try:
        return _TASKS[name]
    except KeyError as exc:
        raise InvalidArgumentError(f"{flag} {name}: unknown task (available: {', '.join(task_names())})") from exc


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def check_options(name: str, options: Mapping[str, Any] | None, *, has_reference: bool = True,
                  flag: str = "--eval") -> None:
    """Raise InvalidArgumentError when an option task NAME needs is missing, or the unpruned model it compares
    with (HAS_REFERENCE false), before any work is done. FLAG is the option that named the task."""
    task = get_task(name, flag)
    options = options or {}
    missing = [key for key in task.required if options.get(key) in (None, "")]
    if missing:
        raise InvalidArgumentError(f"{flag} {name}: needs {', '.join(_flag(key) for key in missing)}")
    stand_in = bool(task.reference_unless and options.get(task.reference_unless))
    if task.needs_reference and not has_reference and not stand_in:
        alternative = f" or {_flag(task.reference_unless)}" if task.reference_unless else ""
        raise InvalidArgumentError(f"{flag} {name}: needs --reference UNPRUNED.onnx (the unpruned model)"
                                   f"{alternative}")


def evaluate(task: str, model_path: str | os.PathLike, *, reference: str | os.PathLike | None = None,
             options: Mapping[str, Any] | None = None, flag: str = "--eval") -> dict:
    """Run task TASK on MODEL_PATH. Returns the evaluator's dict plus ``task``, ``metric`` and ``value``
    (the headline number as a float; None when the evaluator gave NaN, e.g. a reference that detects nothing)."""
    spec = get_task(task, flag)
    options = dict(options or {})
    check_options(task, options, has_reference=reference is not None, flag=flag)
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


def summarize(result: dict) -> tuple[dict, str]:
    """(JSON summary, one line) of a result of `evaluate`, as `onnxdepth eval` prints it."""
    spec = get_task(result["task"])
    return (spec.summarize or _default_summary(spec))(result)


def random_line(task: str, model_path: str | os.PathLike, options: Mapping[str, Any] | None = None) -> float | None:
    """The random-guess score of TASK for this model (None when it has none)."""
    spec = get_task(task)
    if callable(spec.random):
        return spec.random(Path(model_path), dict(options or {}))
    return None if spec.random is None else float(spec.random)


def _tokenizer_dir(model_path: Path, reference: Path | None, options: Mapping[str, Any]) -> Path:
    """--tokenizer, else the model's directory, else the unpruned model's (pruned models sit elsewhere)."""
    from ..tokenizer_io import has_tokenizer

    if options.get("tokenizer"):
        return Path(options["tokenizer"])
    for candidate in (model_path, reference):
        if candidate is not None and has_tokenizer(candidate.resolve().parent):
            return candidate.resolve().parent
    return model_path.resolve().parent  # the evaluator then says no tokenizer was found there


def _samples(options: Mapping[str, Any]) -> int | None:
    value = options.get("samples", options.get("limit"))
    return None if value is None else int(value)


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


@functools.lru_cache(maxsize=4)
def _text_tokens(text: str, tokenizer_dir: str, max_tokens: int | None):
    """Tokenized once per sweep, not once per point."""
    from .perplexity import load_text_tokens

    return load_text_tokens(text, tokenizer_dir, max_tokens)


def _perplexity_summary(result: dict) -> tuple[dict, str]:
    return (_keys_summary("perplexity", "tokens")(result),
            f"perplexity {result['perplexity']:.4f} on {result['tokens']:,} tokens ({result['seconds']:.0f} s)")


@register_task("perplexity", metric="perplexity", higher_is_better=False, random=_vocabulary_size, log_scale=True,
               required=("text",), label="perplexity", summarize=_perplexity_summary, random_note="vocabulary size")
def _perplexity(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    from .perplexity import perplexity

    if options.get("tokenizer") and not Path(options["tokenizer"]).is_dir():
        raise InvalidArgumentError(f"--tokenizer {options['tokenizer']}: no such directory")
    tokens = _text_tokens(str(options["text"]), str(_tokenizer_dir(model_path, reference, options)),
                          options.get("max_tokens"))
    return perplexity(str(model_path), tokens, ctx=int(options.get("ctx") or 512), stride=options.get("stride"),
                      threads=options.get("threads"), progress=bool(options.get("progress")))


# ------------------------------------------------------------------------------------------- detection

@functools.lru_cache(maxsize=2)
def _images(count: int, size: int) -> tuple:
    from .detection import reference_images

    return tuple(reference_images(count, size))


def _detection_summary(result: dict) -> tuple[dict, str]:
    maps = f"mAP50 {result['map50']:.4f}, mAP50-95 {result['map50_95']:.4f} on {result['images']} images"
    if "label_boxes" in result:
        return (_keys_summary("map50", "map50_95", "images", "label_boxes")(result),
                f"{maps} ({result['label_boxes']} labelled boxes)")
    return (_keys_summary("map50", "map50_95", "images", "reference_boxes")(result),
            f"fidelity {maps} ({result['reference_boxes']} reference boxes)")


@register_task("detection", metric="map50", higher_is_better=True, random=0.0, needs_reference=True,
               reference_unless="image_dir", label="fidelity mAP50", summarize=_detection_summary)
def _detection(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    """Fidelity mAP against the unpruned model's detections, or, with ``image_dir``, mAP against labels."""
    imgsz = int(options.get("imgsz") or 320)
    if options.get("image_dir"):
        from .detection_labels import labelled_map

        return labelled_map(str(model_path), options["image_dir"], options.get("labels"), imgsz=imgsz,
                            threads=options.get("threads"), limit=options.get("limit"))
    from .detection import fidelity_map

    images = _images(int(options.get("images") or 24), imgsz)
    return fidelity_map(str(model_path), str(reference), images, threads=options.get("threads"))


# ------------------------------------------------------------------------------------- multiple choice

def _multiple_choice_summary(result: dict) -> tuple[dict, str]:
    scored = [style for style in ("letter", "cloze") if result.get(f"{style}_accuracy") is not None]
    scores = ", ".join(f"{style} accuracy {result[f'{style}_accuracy']:.4f}" for style in scored)
    return (_keys_summary(*(f"{style}_accuracy" for style in scored), "questions", "shots")(result),
            f"multiple-choice {scores} on {result['questions']:,} questions ({result['shots']}-shot, "
            f"{result['seconds']:.0f} s)")


def _multiple_choice(style: str) -> Evaluator:
    """MMLU accuracy by STYLE, or by the ``scoring`` option when given (`eval --scoring`)."""

    def run(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
        from .multiple_choice import evaluate_multiple_choice

        scoring = options.get("scoring") or style
        result = evaluate_multiple_choice(
            str(model_path), options["data"], dev=options.get("dev"), shots=int(options.get("shots") or 0),
            scoring=scoring, limit=options.get("limit"), max_length=options.get("max_length"),
            tokenizer_dir=str(_tokenizer_dir(model_path, reference, options)), threads=options.get("threads"),
            progress=bool(options.get("progress")))
        # The headline is this task's style; None when --scoring left it out (`eval --scoring`).
        return {f"{style}_accuracy": None, **result}

    return run


# MMLU's standard letter scoring (the thesis's Figures 4.1 / 4.2) and cloze scoring (answer texts); four
# choices: a random guess scores 0.25. The sweep's metric key stays the style's own accuracy.
for _name, _style in (("multiple-choice", "letter"), ("multiple-choice-cloze", "cloze")):
    register_task(_name, metric=f"{_style}_accuracy", higher_is_better=True, random=0.25, required=("data",),
                  label=f"accuracy ({_style})", summarize=_multiple_choice_summary)(_multiple_choice(_style))


# ------------------------------------------------------------------------------------------------- OCR

def _ocr_summary(result: dict) -> tuple[dict, str]:
    if result["kind"] == "rec":
        return (_keys_summary("kind", "char_accuracy", "line_accuracy", "samples")(result),
                f"ocr rec: character accuracy {result['char_accuracy']:.4f}, line accuracy "
                f"{result['line_accuracy']:.4f} on {result['samples']} rendered lines ({result['seconds']:.0f} s)")
    return (_keys_summary("kind", "precision", "recall", "f1", "samples")(result),
            f"ocr det: precision {result['precision']:.4f}, recall {result['recall']:.4f}, F1 {result['f1']:.4f} "
            f"at IoU 0.5 on {result['samples']} rendered pages ({result['truth_boxes']} text lines, "
            f"{result['seconds']:.0f} s)")


@register_task("ocr", metric="score", higher_is_better=True, random=0.0,
               label="OCR score (rec: character accuracy, det: F1)", summarize=_ocr_summary)
def _ocr(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    from .ocr import evaluate_ocr

    result = evaluate_ocr(str(model_path), kind=options.get("ocr_kind"), samples=_samples(options),
                          seed=int(options.get("seed") or 0), threads=options.get("threads"),
                          progress=bool(options.get("progress")))
    # one headline for both model kinds: recognition's character accuracy, detection's F1
    return {**result, "score": result["char_accuracy"] if result.get("kind") == "rec" else result["f1"]}


# ------------------------------------------------------------------------------------------- embedding

def _embedding_summary(result: dict) -> tuple[dict, str]:
    return (_keys_summary("cosine", "top1", "samples")(result),
            f"embedding: mean cosine {result['cosine']:.4f} (min {result['cosine_min']:.4f}), top-1 retrieval "
            f"{result['top1']:.4f} on {result['samples']} lines")


@register_task("embedding", metric="cosine", higher_is_better=True, needs_reference=True,
               label="cosine similarity to the unpruned embeddings", summarize=_embedding_summary)
def _embedding(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    from .embedding import embedding_similarity

    extra = {"samples": _samples(options)} if _samples(options) is not None else {}
    return embedding_similarity(str(model_path), str(reference), text_file=options.get("text"),
                                tokenizer_dir=options.get("tokenizer"), threads=options.get("threads"), **extra)


# -------------------------------------------------------------------------------------------- fidelity

def _fidelity_summary(result: dict) -> tuple[dict, str]:
    from ..fidelity import fidelity_line

    keys = [k for k in ("kind", "measure", "value", "kl", "map50_95", "line_agreement", "relative_error", "data")
            if k in result]
    return _keys_summary(*keys)(result), fidelity_line({**result, "metric": result["measure"]})


@register_task("fidelity", metric="value", higher_is_better=True, needs_reference=True,
               label="held-out fidelity to the unpruned model", summarize=_fidelity_summary)
def _fidelity(model_path: Path, *, reference: Path | None, options: Mapping[str, Any]) -> dict:
    """The prune's fidelity line (`onnxdepth.fidelity`) on the held-out data its plan describes."""
    from ..fidelity.files import file_fidelity

    result = file_fidelity(model_path, reference, options)
    # `evaluate` files the headline under "metric" = "value": the kind's own metric goes under "measure".
    return {**result, "measure": result["metric"]}
