"""The ONNX Runtime layer every command shares: sessions, progress bars, one-line error messages.

`open_session` is the one place that builds an ``onnxruntime.InferenceSession`` (from a path, a
ModelProto, serialized bytes, or an existing session); `progress` the one rich progress bar on stderr;
`first_line` the one way a foreign exception becomes the tail of a one-line, user-facing message.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError, ModelLoadError

__all__ = ["DEVICES", "ProgressBar", "ProviderUnavailableError", "first_line", "open_session", "ort_errors",
           "progress", "providers_for"]

#: Values of ``device``: ONNX Runtime's CPU provider, or CUDA (onnxruntime-gpu) with CPU fallback.
DEVICES = ("cpu", "cuda")

#: ORT log severity of every session: errors only (3), so that ORT's warnings do not flood the terminal.
_LOG_SEVERITY = 3


class ProviderUnavailableError(InvalidArgumentError):
    """The requested execution provider (CUDA) is not in this onnxruntime build."""


# --------------------------------------------------------------------------------------------- errors

def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of EXC's message (an OSError's strerror), else its type name; cut to LIMIT
    characters (ending in "...") when given. Third-party messages run to pages; ours are one line."""
    if isinstance(exc, OSError) and exc.strerror:
        line = exc.strerror
    else:
        lines = [text.strip() for text in str(exc).splitlines() if text.strip()]
        line = lines[0] if lines else type(exc).__name__
    if limit is not None and len(line) > limit:
        line = line[:max(limit - 3, 0)] + "..."
    return line


@functools.lru_cache(maxsize=1)
def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises for a model or inputs it rejects (its pybind11 status
    types, RuntimeError, and the ValueError of its input-feed check); catch these, never Exception."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    status = tuple(value for value in vars(state).values()
                   if isinstance(value, type) and issubclass(value, Exception))
    return (*status, RuntimeError, ValueError)


# ------------------------------------------------------------------------------------------- sessions

def providers_for(device: str) -> list[str]:
    """Execution providers for DEVICE ("cpu" or "cuda"); ProviderUnavailableError when CUDA is missing."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ProviderUnavailableError("--device cuda: the CUDA execution provider is not available "
                                           "(install onnxruntime-gpu on a machine with a GPU)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InvalidArgumentError(f"--device {device}: expected {' or '.join(DEVICES)}")


def _session_options(threads: int | None, graph_optimization_level, execution_mode,
                     initializers: Mapping[str, Any] | None, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = _LOG_SEVERITY
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise InvalidArgumentError(f"threads must be >= 1 (or 0: ONNX Runtime's default), got {threads!r}")
        options.intra_op_num_threads = threads  # 0 is ORT's own "one per physical core"
    if graph_optimization_level is not None:
        options.graph_optimization_level = graph_optimization_level
    if execution_mode is not None:
        options.execution_mode = execution_mode
    for name, value in (initializers or {}).items():
        options.add_initializer(name, value)  # shares VALUE's buffer instead of copying the initializer
    if profile_prefix is not None:
        options.enable_profiling = True  # ORT's JSON trace: one event per kernel run (onnxdepth.latency)
        options.profile_file_prefix = profile_prefix
    return options


def open_session(model, *, threads: int | None = None, device: str = "cpu", providers: Sequence[str] | None = None,
                 graph_optimization_level=None, execution_mode=None, initializers: Mapping[str, Any] | None = None,
                 profile_prefix: str | None = None):
    """An ``onnxruntime.InferenceSession`` of MODEL: a path, a ModelProto, serialized bytes, or a session
    (returned as it is, the options ignored).

    THREADS: intra-op threads (None or 0: ONNX Runtime's default). DEVICE picks the providers ("cuda": CUDA,
    then CPU), unless PROVIDERS names them. GRAPH_OPTIMIZATION_LEVEL and EXECUTION_MODE: ORT's enums
    (None: ORT's defaults). INITIALIZERS: name -> OrtValue used in place of the model's initializer of
    that name. PROFILE_PREFIX: turn on ORT's profiler, its trace written to PROFILE_PREFIX<time>.json
    (`session.end_profiling()` names the file). Raises ModelLoadError (a missing file, or the first line of ORT's refusal),
    ProviderUnavailableError, or InvalidArgumentError.
    """
    import onnxruntime as ort

    if isinstance(model, ort.InferenceSession):
        return model
    if isinstance(model, (bytes, bytearray)):
        source, name = bytes(model), "the model"
    elif hasattr(model, "SerializeToString"):
        from .graph.external import folder_of

        # A model with its weights kept external (`graph.external`) serializes small; ORT reads them from there.
        folder = folder_of(model)
        source, name = model.SerializeToString(), "the model"
    elif isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise ModelLoadError(f"model file not found: {model}")
        source = name = str(model)
    else:
        raise InvalidArgumentError(f"cannot open a session of a {type(model).__name__}: expected a path, a "
                                   "ModelProto, bytes or an InferenceSession")
    options = _session_options(threads, graph_optimization_level, execution_mode, initializers, profile_prefix)
    if isinstance(source, bytes) and hasattr(model, "SerializeToString") and folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    chosen = list(providers) if providers else providers_for(device)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=chosen)
    except ort_errors() as exc:
        raise ModelLoadError(f"onnxruntime cannot load {name}: {first_line(exc)}") from exc
    _resolve_implied_inputs(session, model)
    return session


@dataclass(frozen=True)
class InputSpec:
    """One session input as `InferenceSession.get_inputs()` describes it (name, shape, type)."""

    name: str
    shape: list
    type: str


def _resolve_implied_inputs(session, model) -> None:
    """Make SESSION report the symbolic input dims that MODEL's weights fix (the head size of a fused attention's
    KV cache, `kv_cache_dim` in GenAI builder models: `graph.contrib.implied_dims`) as numbers, so that every
    caller sizing an empty cache from `get_inputs()` works unchanged. Other models are left as they are."""
    import onnx

    from .graph.contrib import implied_dims

    if hasattr(model, "SerializeToString"):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        return  # only small in-memory models come as bytes; none of them has fused attention
    else:
        proto = onnx.load(str(model), load_external_data=False)
    implied = implied_dims(proto)
    if not implied:
        return
    specs = [InputSpec(i.name, [implied.get(d, d) if isinstance(d, str) else d for d in i.shape], i.type)
             for i in session.get_inputs()]
    session.get_inputs = lambda: list(specs)  # an instance attribute: this session only


# ------------------------------------------------------------------------------------------- progress

class ProgressBar:
    """A rich progress bar on stderr (nothing at all when disabled): ``advance`` once per item, ``note``
    for the text after the bar; a context manager, or call ``close``."""

    def __init__(self, total: int, label: str, enabled: bool, transient: bool):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TimeRemainingColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
                             transient=transient, disable=not enabled or (transient and not sys.stderr.isatty()))
        self._task = self._bar.add_task("", total=total)
        self._bar.start()

    def advance(self, steps: int = 1, note: str | None = None) -> None:
        self._bar.update(self._task, advance=steps, **({} if note is None else {"description": note}))

    def note(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def close(self) -> None:
        self._bar.stop()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(total: int, label: str, enabled: bool = True, *, transient: bool = True) -> ProgressBar:
    """A progress bar of TOTAL steps named LABEL (see `ProgressBar`); a silent one when not ENABLED.
    TRANSIENT bars disappear when closed, and are not drawn at all when stderr is not a terminal (a log
    would keep only a stray newline); the others stay as the last line of the run."""
    return ProgressBar(total, label, enabled, transient)
