"""The importance stage's output: one score per unit, and for whole layers the distances of runs of layers.

`onnxdepth score -o scores.csv` writes a `ScoreTable` as CSV (`unit,score`, lowest first) and
`prune --scores` reads it back. Runs of layers (Gromov et al.'s selection) are rows `layers{l}-{m}`:
the angular distance between the input of layer l and the output of layer m. A table scored with
`--compensate lstsq` also carries each row's damage left after its least-squares fit (column `after_fit`).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidArgumentError

__all__ = ["ScoreTable"]

_RUN_ROW = re.compile(r"layers(\d+)-(\d+)")


@dataclass
class ScoreTable:
    """UNITS: unit id -> importance. RUNS: distances of contiguous runs of layers, keyed (first, last)."""

    units: dict[str, float]
    runs: dict[tuple[int, int], float] = field(default_factory=dict)
    after_fit: dict[str, float] = field(default_factory=dict)  # row name (see rows()) -> damage after its fit

    @classmethod
    def from_run_table(cls, units: dict[str, float], table: list[list[float]]) -> "ScoreTable":
        """TABLE[l][n]: distance between the input of layer l and the output of layer l + n - 1 (n >= 1)."""
        runs = {(l, l + n - 1): float(row[n]) for l, row in enumerate(table) for n in range(1, len(row))}
        return cls(dict(units), runs)

    @classmethod
    def from_layer_runs(cls, table: list[list[float]]) -> "ScoreTable":
        """Whole-layer scores from a run table alone: `layer{l}.block` is the run of one layer, TABLE[l][1]."""
        return cls.from_run_table({f"layer{l}.block": row[1] for l, row in enumerate(table)}, table)

    def run_table(self, n_layers: int) -> list[list[float]] | None:
        """The runs as TABLE[l][n] (see from_run_table) for a model of N_LAYERS layers; None if any is missing."""
        table = []
        for first in range(n_layers):
            row = [0.0]
            for n in range(1, n_layers - first + 1):
                key = (first, first + n - 1)  # a run of n layers starting at FIRST
                if key not in self.runs:
                    return None
                row.append(self.runs[key])
            table.append(row)
        return table

    def rows(self) -> dict[str, float]:
        """Every score as a CSV row name -> value: the units, then `layers{l}-{m}` for each run."""
        return {**self.units, **{f"layers{first}-{last}": value for (first, last), value in self.runs.items()}}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["unit", "score", "after_fit"] if self.after_fit else ["unit", "score"])
        for unit, score in sorted(self.rows().items(), key=lambda item: item[1]):
            fitted = [f"{self.after_fit[unit]:.8g}" if unit in self.after_fit else ""] if self.after_fit else []
            writer.writerow([unit, f"{score:.8g}", *fitted])
        return buffer.getvalue()

    @classmethod
    def read_csv(cls, path: str) -> "ScoreTable":
        """A table written by `onnxdepth score`: CSV with a header `unit,score` (an `after_fit` column is read
        back too; `prune --scores` ranks by `score`)."""
        if not Path(path).exists():
            raise InvalidArgumentError(f"--scores {path}: no such file")
        units: dict[str, float] = {}
        runs: dict[tuple[int, int], float] = {}
        after_fit: dict[str, float] = {}
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    name, value = row["unit"], float(row["score"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise InvalidArgumentError(f"--scores {path}: expected CSV columns unit,score") from exc
                fitted = (row.get("after_fit") or "").strip()
                if fitted:
                    try:
                        after_fit[name] = float(fitted)
                    except ValueError as exc:
                        raise InvalidArgumentError(f"--scores {path}: after_fit of {name} is not a number") from exc
                run = _RUN_ROW.fullmatch(name)
                if run:
                    runs[(int(run.group(1)), int(run.group(2)))] = value
                else:
                    units[name] = value
        if not units and not runs:
            raise InvalidArgumentError(f"--scores {path}: empty score table")
        return cls(units, runs, after_fit)

    def __len__(self) -> int:
        return len(self.units) + len(self.runs)
