"""`onnxdepth bench`: ONNX Runtime latency of several models side by side, interleaved (A B A B ...)
so that machine noise hits all of them alike.

Inputs are random tensors of the model's input shapes (one batch, or --batches of them), or a dataset
from an .npz (--data: arrays named like the graph inputs, or `input_ids` for a causal LM / encoder, or
`images` for a one-input image model), cut into batches of --batch-size along axis 0. One timed run is a
pass over all batches: the table gives the median and p90 latency per batch and the median total per
pass, the parameters, the file size, the resident memory the session added when it was created and the
further memory its first runs added (arena growth). On --device cuda, inputs and outputs are bound to
the GPU once with IO binding, so the timing is the model, not host-device copies."""

from __future__ import annotations

import statistics
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError
from .graph.external import model_bytes
from .graph.io import load_model
from .graph.shapes import concrete_input_shapes
from .params import count_params_proto
from .runtime import open_session, ort_errors, providers_for
from .runtime import progress as progress_bar
from .tables import bench_table, html_table
from .verify import random_feeds

__all__ = ["BenchRow", "bench_models", "render_table", "render_html"]


@dataclass
class BenchRow:
    model: str
    params: int
    file_mb: float
    session_rss_mb: float
    median_ms: float  # per batch
    p90_ms: float  # per batch
    runs: int
    vs_first: float | None = None  # median relative to the first model
    batches: int = 1
    total_ms: float = 0.0  # median over runs of the time for all batches
    run_rss_mb: float = 0.0  # resident memory added by the first runs (arena growth)

    def to_json(self) -> dict:
        return asdict(self)


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _dataset_feeds(model, data: dict, batch_size: int, shapes: dict) -> list[dict]:
    """Feeds per batch for MODEL from the arrays in DATA (see the module docstring)."""
    from .importance.angular import model_feeds

    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    names = [v.name for v in inputs]
    if all(n in data for n in names):
        arrays = {n: data[n] for n in names}
        count = len(arrays[names[0]])
        return [{n: np.ascontiguousarray(a[i:i + batch_size]) for n, a in arrays.items()}
                for i in range(0, count, batch_size)]
    if "input_ids" in data and "input_ids" in names:
        ids = np.asarray(data["input_ids"], dtype=np.int64)
        specs = {v.name: _Spec(shapes.get(v.name, ())) for v in inputs}
        return [model_feeds(specs, ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]
    if "images" in data and len(names) == 1:
        images = np.asarray(data["images"], dtype=np.float32)
        return [{names[0]: np.ascontiguousarray(images[i:i + batch_size])} for i in range(0, len(images), batch_size)]
    raise InvalidArgumentError(f"--data: needs arrays named like the model inputs ({', '.join(names)}), "
                               f"or input_ids / images (has: {', '.join(data) or 'nothing'})")


class _Spec:
    def __init__(self, shape):
        self.shape = list(shape)


def _load_data(path: str) -> dict:
    try:
        archive = np.load(path)
    except FileNotFoundError as exc:
        raise InvalidArgumentError(f"--data {path}: no such file") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # what numpy raises for other files
        raise InvalidArgumentError(f"--data {path}: not an .npz archive ({type(exc).__name__})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
        raise InvalidArgumentError(f"--data {path}: not an .npz archive ({type(archive).__name__})")
    with archive:
        try:
            return {k: archive[k] for k in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a truncated or corrupt member
            raise InvalidArgumentError(f"--data {path}: not an .npz archive ({type(exc).__name__})") from exc


class _Runner:
    """One model's session and its batches; on CUDA the batches are bound to the device once."""

    def __init__(self, session, feeds: list[dict], device: str):
        self.session, self.feeds, self.bindings = session, feeds, None
        if device == "cuda":
            import onnxruntime as ort

            self.bindings = []
            for feed in feeds:
                binding = session.io_binding()
                for name, value in feed.items():
                    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
                for output in session.get_outputs():
                    binding.bind_output(output.name, "cuda")
                self.bindings.append(binding)

    def run(self, index: int) -> None:
        if self.bindings is None:
            self.session.run(None, self.feeds[index])
        else:
            self.session.run_with_iobinding(self.bindings[index])


def bench_models(paths: list[str], *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                 device: str = "cpu", input_shapes: dict | None = None, seed: int = 0, data: str | None = None,
                 batch_size: int = 1, batches: int = 1, progress: bool = False) -> list[BenchRow]:
    """Latency of every model in PATHS on the same inputs, runs interleaved across models."""
    if not paths:
        raise InvalidArgumentError("bench needs at least one model")
    if runs < 1 or warmup < 0:
        raise InvalidArgumentError("--runs must be >= 1 and --warmup >= 0")
    if batch_size < 1 or batches < 1:
        raise InvalidArgumentError("--batch-size and --batches must be >= 1")
    providers = providers_for(device)
    dataset = _load_data(data) if data else None
    runners, rows = [], []
    for path in paths:
        model = load_model(path)  # one-line errors for bad files
        before = _rss_mb()
        session = open_session(str(path), threads=threads, providers=providers)
        rss = _rss_mb() - before
        shapes = concrete_input_shapes(model, input_shapes)
        if dataset is not None:
            feeds = _dataset_feeds(model, dataset, batch_size, shapes)
        else:
            feeds = [random_feeds(model, shapes, seed=seed + b) for b in range(batches)]
        if not feeds:
            raise InvalidArgumentError("--data: the arrays are empty")
        runners.append(_Runner(session, feeds, device))
        rows.append(BenchRow(str(path), count_params_proto(model), model_bytes(path, model) / 1e6, rss, 0.0, 0.0,
                             runs, batches=len(feeds)))
    for row, runner in zip(rows, runners):
        before = _rss_mb()
        try:
            runner.run(0)
        except ort_errors() as exc:  # ORT's own message, all lines: they name the input and dimension at fault
            raise InvalidArgumentError(f"{row.model} does not run on these inputs: "
                                       f"{' '.join(str(exc).split())[:240]}") from exc
        row.run_rss_mb = _rss_mb() - before
    for _ in range(warmup):
        for runner in runners:
            for b in range(len(runner.feeds)):
                runner.run(b)
    per_batch: list[list[float]] = [[] for _ in runners]
    totals: list[list[float]] = [[] for _ in runners]
    with progress_bar(runs, "timing (interleaved runs)", progress) as bar:
        for _ in range(runs):
            bar.advance()
            for k, runner in enumerate(runners):
                totals[k].append(_timed_pass(runner, per_batch[k]))
    for row, samples, total in zip(rows, per_batch, totals):
        row.median_ms = statistics.median(samples)
        row.p90_ms = float(np.percentile(samples, 90))
        row.total_ms = statistics.median(total)
    for row in rows:
        row.vs_first = row.total_ms / rows[0].total_ms if rows[0].total_ms else None
    return rows


def _timed_pass(runner: _Runner, samples: list[float]) -> float:
    """Run every batch of RUNNER once, appending each batch's milliseconds to SAMPLES; the pass total."""
    total = 0.0
    for b in range(len(runner.feeds)):
        started = time.perf_counter()
        runner.run(b)
        elapsed = (time.perf_counter() - started) * 1e3
        samples.append(elapsed)
        total += elapsed
    return total


def render_table(rows: list[BenchRow]) -> str:
    lines = [f"{'model':<40}{'params':>13}{'MB':>9}{'batches':>8}{'ms/batch':>10}{'p90':>9}{'total ms':>10}"
             f"{'vs first':>9}{'RSS MB':>8}"]
    for r in rows:
        name = r.model if len(r.model) <= 38 else "..." + r.model[-35:]
        lines.append(f"{name:<40}{r.params:>13,}{r.file_mb:>9.2f}{r.batches:>8}{r.median_ms:>10.2f}{r.p90_ms:>9.2f}"
                     f"{r.total_ms:>10.1f}{(r.vs_first or 0):>9.3f}{r.session_rss_mb + r.run_rss_mb:>8.0f}")
    return "\n".join(lines)


def render_html(rows: list[BenchRow]) -> str:
    """A self-contained HTML page with the latency table (the report's table renderer)."""
    return ("<!doctype html><meta charset='utf-8'><title>onnxdepth bench</title><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style><h1>ONNX Runtime latency</h1>"
            + html_table(bench_table([row.to_json() for row in rows])) + "\n")
