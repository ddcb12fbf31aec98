"""The on-disk format of a sweep directory, shared by `sweep` (which writes it) and `report` (which reads it).

Layout::

    DIR/sweep.json     the arguments, their hash, the tasks and their random-guess scores
    DIR/points.jsonl   one JSON row per point, rewritten atomically after every point (resumable)
    DIR/points.csv     the same rows as a table
    DIR/models/        the pruned models and their plans

A point row holds at least ``method`` and ``ratio``; the unpruned model is the point (``BASELINE``, 0).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .errors import InvalidArgumentError
from .fileio import write_atomic

__all__ = ["BASELINE", "CSV_COLUMNS", "CSV_FILE", "CSV_TAIL", "FORMAT_VERSION", "MODELS_DIR", "POINTS_FILE",
           "SWEEP_FILE", "clean", "points_csv", "read_meta", "read_points", "row_order", "write_points"]

SWEEP_FILE = "sweep.json"
POINTS_FILE = "points.jsonl"
CSV_FILE = "points.csv"
MODELS_DIR = "models"
BASELINE = "unpruned"
FORMAT_VERSION = 1

CSV_COLUMNS = ["method", "ratio", "status", "reduction", "params", "params_before", "units", "file_mb", "latency_ms",
               "latency_p90_ms", "baseline_latency_ms", "latency_vs_unpruned"]
CSV_TAIL = ["seconds", "prune_s", "eval_s", "bench_s", "model", "time", "reason"]


def clean(value):
    """JSON-safe: NaN/inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_meta(directory: str | Path) -> dict:
    """The sweep.json of DIRECTORY; InvalidArgumentError when there is none or it is not JSON."""
    path = Path(directory) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{directory}: not a sweep directory (no readable {SWEEP_FILE})") from exc


def read_points(path: str | Path) -> list[dict]:
    """The rows of a points.jsonl; a later row for the same point replaces an earlier one."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[tuple, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[(row["method"], float(row["ratio"]))] = row
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgumentError(f"{path}:{number}: not a sweep point (corrupt file?)") from exc
    return list(rows.values())


def write_points(path: str | Path, rows: list[dict]) -> None:
    """ROWS as points.jsonl at PATH, atomically (one sorted-key JSON object a line)."""
    write_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def row_order(row: dict) -> tuple:
    """Sort key of a point: the unpruned model first, then by method and ratio."""
    return (row["method"] != BASELINE, row["method"], float(row["ratio"]))


def points_csv(rows: list[dict], task_names: list[str]) -> str:
    """ROWS as CSV text: the fixed columns, one column per task's headline metric, then the timings."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS + task_names + CSV_TAIL)
    for row in sorted(rows, key=row_order):
        metrics = row.get("metrics") or {}
        writer.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS] + [_csv_cell(metrics.get(t)) for t in task_names]
                        + [_csv_cell(row.get(c)) for c in CSV_TAIL])
    return buffer.getvalue()


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
