"""`onnxdepth bench`: ONNX Runtime latency of several models side by side, interleaved (A B A B ...)
so that machine noise hits all of them alike; median and p90 per run, parameters, file size, and the
resident memory each session added when it was created."""

from __future__ import annotations

import html
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError
from .graph.io import load_model
from .graph.shapes import concrete_input_shapes
from .params import count_params_proto
from .verify import random_feeds

__all__ = ["BenchRow", "bench_models", "render_table", "render_html"]


@dataclass
class BenchRow:
    model: str
    params: int
    file_mb: float
    session_rss_mb: float
    median_ms: float
    p90_ms: float
    runs: int
    vs_first: float | None = None  # median relative to the first model

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


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InvalidArgumentError("--device cuda: the CUDA execution provider is not available "
                                       "(install onnxruntime-gpu on a machine with a GPU)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InvalidArgumentError(f"--device {device}: expected cpu or cuda")


def bench_models(paths: list[str], *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                 device: str = "cpu", input_shapes: dict | None = None, seed: int = 0) -> list[BenchRow]:
    """Latency of every model in PATHS on the same random inputs, runs interleaved across models."""
    import onnxruntime as ort

    if not paths:
        raise InvalidArgumentError("bench needs at least one model")
    if runs < 1 or warmup < 0:
        raise InvalidArgumentError("--runs must be >= 1 and --warmup >= 0")
    providers = _providers(device)
    sessions, feeds, rows = [], [], []
    for path in paths:
        model = load_model(path)  # one-line errors for bad files
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        before = _rss_mb()
        session = ort.InferenceSession(str(path), options, providers=providers)
        rss = _rss_mb() - before
        shapes = concrete_input_shapes(model, input_shapes)
        feeds.append(random_feeds(model, shapes, seed=seed))
        sessions.append(session)
        rows.append(BenchRow(str(path), count_params_proto(model), Path(path).stat().st_size / 1e6, rss, 0.0, 0.0,
                             runs))
    for _ in range(warmup):
        for session, feed in zip(sessions, feeds):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for k, (session, feed) in enumerate(zip(sessions, feeds)):
            started = time.perf_counter()
            session.run(None, feed)
            times[k].append((time.perf_counter() - started) * 1e3)
    for row, samples in zip(rows, times):
        row.median_ms = statistics.median(samples)
        row.p90_ms = float(np.percentile(samples, 90))
    for row in rows:
        row.vs_first = row.median_ms / rows[0].median_ms if rows[0].median_ms else None
    return rows


def render_table(rows: list[BenchRow]) -> str:
    lines = [f"{'model':<40}{'params':>13}{'MB':>9}{'median ms':>11}{'p90 ms':>9}{'vs first':>9}{'RSS MB':>8}"]
    for r in rows:
        name = r.model if len(r.model) <= 38 else "..." + r.model[-35:]
        lines.append(f"{name:<40}{r.params:>13,}{r.file_mb:>9.2f}{r.median_ms:>11.2f}{r.p90_ms:>9.2f}"
                     f"{(r.vs_first or 0):>9.3f}{r.session_rss_mb:>8.0f}")
    return "\n".join(lines)


def render_html(rows: list[BenchRow]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(r.model)}</td><td>{r.params:,}</td><td>{r.file_mb:.2f}</td><td>{r.median_ms:.2f}</td>"
        f"<td>{r.p90_ms:.2f}</td><td>{(r.vs_first or 0):.3f}</td><td>{r.session_rss_mb:.0f}</td></tr>" for r in rows)
    return ("<!doctype html><meta charset='utf-8'><title>onnxdepth bench</title><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "td:first-child{text-align:left}</style><h1>ONNX Runtime latency</h1><table><tr><th>model</th>"
            "<th>params</th><th>MB</th><th>median ms</th><th>p90 ms</th><th>vs first</th><th>session RSS MB</th>"
            f"</tr>{cells}</table>")
