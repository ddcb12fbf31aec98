"""The report's figures as PNG bytes (matplotlib, Agg canvas; no pyplot state, no display needed).

- metric_plot: a task's score vs parameter reduction, one line per method, the random-guess score as a
  gray dashed line (thesis Figures 4.1, 4.2, 4.4-4.6); perplexity on a log axis.
- latency_plot: latency vs parameter reduction, absolute and relative to the unpruned model.
- unit_grid_plot: which units of which layer were pruned (Figure 4.3).
- bench_plot: median latency per model of an `onnxdepth bench --json` run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from .unitgrid import UnitGrid

__all__ = ["Series", "metric_plot", "latency_plot", "unit_grid_plot", "bench_plot"]

PRUNED_COLOR = "#d62728"
KEPT_COLOR = "#e8e8e8"
RANDOM_COLOR = "#808080"


@dataclass
class Series:
    label: str
    x: list[float]  # parameter reduction in %
    y: list[float]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _lines(axes, series: list[Series]) -> None:
    for s in series:
        pairs = sorted((x, y) for x, y in zip(s.x, s.y) if y is not None)
        if pairs:
            axes.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", markersize=4, label=s.label)


def metric_plot(series: list[Series], *, ylabel: str, title: str = "", log_scale: bool = False,
                random_lines: list[tuple[float, str]] = ()) -> bytes:
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot()
    _lines(axes, series)
    for value, label in random_lines:
        axes.axhline(value, color=RANDOM_COLOR, linestyle="--", linewidth=1.2, label=label)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("parameter reduction (%)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


def latency_plot(absolute: list[Series], relative: list[Series]) -> bytes:
    """Left: median latency per batch in ms. Right: latency / unpruned latency (same interleaved run),
    with the line latency = 1 - parameter reduction that proportional savings would follow."""
    figure = _figure(10.0, 4.0)
    left, right = figure.subplots(1, 2)
    _lines(left, absolute)
    left.set_ylabel("latency per batch (ms, median)")
    _lines(right, relative)
    top = max([max(s.x, default=0.0) for s in relative] + [1.0])
    right.plot([0.0, top], [1.0, 1.0 - top / 100.0], color=RANDOM_COLOR, linestyle="--", linewidth=1.2,
               label="proportional to parameters")
    right.set_ylabel("latency / unpruned latency")
    for axes in (left, right):
        axes.set_xlabel("parameter reduction (%)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    return _png(figure)


def unit_grid_plot(grid: UnitGrid, title: str = "") -> bytes:
    """Layers along x, unit kinds along y; pruned cells in red with the step that pruned them."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    width = min(max(4.0, 0.32 * grid.layers + 2.0), 18.0)
    figure = _figure(width, 2.6)
    axes = figure.add_subplot()
    # cells[k, l] = 1 when unit kind k of layer l is pruned (row k is a kind, column l a layer)
    cells = np.array([[1 if grid.pruned(layer, kind) else 0 for layer in range(grid.layers)] for kind in grid.kinds])
    axes.imshow(cells, cmap=ListedColormap([KEPT_COLOR, PRUNED_COLOR]), vmin=0, vmax=1, aspect="auto")
    if grid.layers <= 40:
        for (layer, kind), step in grid.order.items():
            axes.text(layer, grid.kinds.index(kind), str(step), ha="center", va="center", color="white", fontsize=7)
    axes.set_yticks(range(len(grid.kinds)), list(grid.kinds))
    every = max(1, grid.layers // 20)  # at most ~20 layer labels
    axes.set_xticks(range(0, grid.layers, every), [str(layer) for layer in range(0, grid.layers, every)])
    # thin white lines between cells
    axes.set_xticks(np.arange(-0.5, grid.layers, 1), minor=True)
    axes.set_yticks(np.arange(-0.5, len(grid.kinds), 1), minor=True)
    axes.grid(which="minor", color="white", linewidth=1.5)
    axes.tick_params(which="minor", length=0)
    axes.set_xlabel("layer (0-indexed)")
    axes.set_title(title, fontsize=10)
    axes.legend(handles=[Patch(color=PRUNED_COLOR, label="pruned (identity), number = step"),
                         Patch(color=KEPT_COLOR, label="kept")], loc="upper center", bbox_to_anchor=(0.5, -0.32),
                ncol=2, fontsize=8, frameon=False)
    return _png(figure)


def bench_plot(names: list[str], medians: list[float], p90s: list[float]) -> bytes:
    figure = _figure(7.0, max(1.6, 0.5 * len(names) + 1.0))
    axes = figure.add_subplot()
    rows = list(range(len(names)))[::-1]  # first model on top
    # the error bar runs from the median to the p90
    axes.barh(rows, medians, xerr=[[0.0] * len(names), [max(p - m, 0.0) for m, p in zip(medians, p90s)]],
              color="#1f77b4", capsize=3)
    axes.set_yticks(rows, names)
    axes.set_xlabel("latency per run (ms): median, bar to p90")
    axes.grid(True, axis="x", alpha=0.3)
    return _png(figure)
