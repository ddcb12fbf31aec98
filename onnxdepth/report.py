"""`onnxdepth report`: sweeps, bench runs and pruned models in one self-contained HTML file (+ Markdown).

Inputs:
- a sweep directory (`onnxdepth sweep -o DIR`): metric vs parameter reduction per task and method with
  the random-guess line, latency vs parameter reduction, and a table in the style of the thesis's
  Tables 4.1 / 4.3 (parameters, latency per batch, metrics); several sweeps share the plots (Figure 4.6);
- a bench JSON (`onnxdepth bench --json > F.json`): the latency table and a bar chart;
- a pruned model (.onnx with the plan in metadata `onnxdepth.plan`) or its OUT.plan.json: what was pruned,
  for transformers as the grid of units per layer of Figure 4.3 (image and HTML table).

The HTML embeds every plot as a base64 PNG and its CSS inline: it loads nothing from anywhere. The
Markdown beside it (same name, .md) links the plots as PNG files written next to it.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import InvalidArgumentError, OutputWriteError
from .api import stored_plan
from .fileio import write_atomic
from .sweep_dir import BASELINE, POINTS_FILE, SWEEP_FILE, read_meta, read_points
from .tables import Table, bench_table, html_table, markdown_table, md_escape, ms

__all__ = ["Figure", "Table", "Section", "build_sections", "render_html", "render_markdown", "write_report"]


@dataclass
class Figure:
    slug: str  # file name stem of the PNG beside the Markdown
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ formatting

_PARAM_UNITS = {1e9: "B", 1e6: "M", 1e3: "K"}


def _param_scale(n: int) -> float:
    """The unit of a table's parameter column: billions, millions or thousands of the unpruned count."""
    return next((s for s in _PARAM_UNITS if n >= s), 1.0)


def _metric(value) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _pct(value) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


# -------------------------------------------------------------------------------------------- sweeps

def _load_sweep(directory: Path) -> dict:
    return {"meta": read_meta(directory), "rows": read_points(directory / POINTS_FILE), "path": directory}


def _task_info(meta: dict, task: str) -> dict:
    """How to draw TASK: the registry's description, overridden by what the sweep stored in sweep.json (a
    task no longer registered is drawn from sweep.json alone)."""
    from .eval import tasks

    stored = meta.get("tasks", {}).get(task, {})
    if task not in tasks.task_names():
        return stored
    spec = tasks.get_task(task)
    return {**spec.describe(), "random_note": spec.random_note, **stored}


def _sweep_figures(sweeps: list[dict]) -> list[Figure]:
    from .plots import Series, latency_plot, metric_plot

    several = len(sweeps) > 1
    figures = []
    task_names = list(dict.fromkeys(t for s in sweeps for t in s["meta"].get("tasks", {})))
    for task in task_names:
        series, randoms, info = [], {}, {}
        for sweep in sweeps:
            meta = sweep["meta"]
            if task not in meta.get("tasks", {}):
                continue
            info = _task_info(meta, task)
            ok = [r for r in sweep["rows"] if r.get("status") == "ok"]
            base = [r for r in ok if r["method"] == BASELINE]
            for method in meta.get("methods", []):
                # every method's line starts at the unpruned model (reduction 0)
                points = base + sorted((r for r in ok if r["method"] == method), key=lambda r: r["reduction"])
                label = f"{meta['label']} {method}" if several else method
                series.append(Series(label, [100 * r["reduction"] for r in points],
                                     [(r.get("metrics") or {}).get(task) for r in points]))
            if info.get("random") is not None:
                randoms.setdefault(info["random"], meta["label"])
        label = info.get("label", task)
        name = label if label == task else f"{task}: {label}"
        lines = [(value, f"random guess ({_metric(value)}" + (f", {name})" if several and len(randoms) > 1 else ")"))
                 for value, name in randoms.items()]
        png = metric_plot(series, ylabel=label, log_scale=info.get("log_scale", False), random_lines=lines,
                          title=f"{name} vs parameter reduction")
        better = "higher" if info.get("higher_is_better") else "lower"
        figures.append(Figure(task, f"{name} vs parameter reduction ({better} is better; gray dashed: random guess)",
                              png))
    absolute, relative = [], []
    for sweep in sweeps:
        meta = sweep["meta"]
        ok = [r for r in sweep["rows"] if r.get("status") == "ok" and r.get("latency_ms") is not None]
        base = [r for r in ok if r["method"] == BASELINE]
        for method in meta.get("methods", []):
            points = base + sorted((r for r in ok if r["method"] == method), key=lambda r: r["reduction"])
            label = f"{meta['label']} {method}" if several else method
            absolute.append(Series(label, [100 * r["reduction"] for r in points], [r["latency_ms"] for r in points]))
            relative.append(Series(label, [100 * r["reduction"] for r in points],
                                   [r.get("latency_vs_unpruned") for r in points]))
    if any(s.x for s in absolute):
        figures.append(Figure("latency", "latency per batch vs parameter reduction (ONNX Runtime, median of "
                                         "runs interleaved with the unpruned model)", latency_plot(absolute, relative)))
    return figures


def _task_column(task: str, info: dict) -> str:
    label = info.get("label", task)
    return task if label == task else f"{task} ({label})"


def _sweep_table(sweep: dict) -> tuple[Table, list[str]]:
    """Thesis Tables 4.1 / 4.3: the unpruned model, then every point; plus notes on skipped points."""
    meta, rows = sweep["meta"], sweep["rows"]
    task_names = list(meta.get("tasks", {}))
    scale = _param_scale(int(meta.get("params_before") or 1))
    columns = ["model", "method", "target", "reduction", f"params ({_PARAM_UNITS[scale]})" if scale > 1 else "params",
               "file MB", "latency per batch (ms)", "vs unpruned",
               *[_task_column(t, _task_info(meta, t)) for t in task_names], "eval time (s)"]
    body, notes = [], []
    methods = [BASELINE, *meta.get("methods", [])]
    for row in sorted(rows, key=lambda r: (methods.index(r["method"]) if r["method"] in methods else len(methods),
                                           r["method"], float(r["ratio"]))):
        if row.get("status") != "ok":
            notes.append(f"{row['method']} {float(row['ratio']):g}: {row.get('status')}, {row.get('reason', '')}")
            continue
        baseline = row["method"] == BASELINE
        name = meta["label"] if baseline else f"{meta['label']} {float(row['ratio']):.2f} {row['method']}"
        params = row.get("params")
        body.append([name, row["method"], "" if baseline else f"{float(row['ratio']):.2f}",
                     "" if baseline else _pct(row.get("reduction")),
                     f"{params / scale:,.3f}" if scale > 1 and params is not None else f"{params:,}",
                     ms(row.get("file_mb", 0)), ms(row.get("latency_ms")),
                     "" if baseline or row.get("latency_vs_unpruned") is None else f"{row['latency_vs_unpruned']:.3f}",
                     *[_metric((row.get("metrics") or {}).get(t)) for t in task_names],
                     f"{row.get('eval_s', 0):.1f}"])
    caption = f"{meta['label']}: {len(body)} points, importance {meta['config'].get('importance')}"
    return Table(columns, body, caption), notes


def _sweep_section(sweeps: list[dict]) -> Section:
    labels = ", ".join(s["meta"]["label"] for s in sweeps)
    section = Section(f"Sweep{'s' if len(sweeps) > 1 else ''}: {labels}")
    for sweep in sweeps:
        meta = sweep["meta"]
        methods = ", ".join(meta.get("methods", []))
        section.notes.append(f"{meta['label']} ({meta['model']}): {meta['kind']}, methods {methods}, "
                             f"{int(meta.get('params_before') or 0):,} parameters")
        for task in meta.get("tasks", {}):
            info = _task_info(meta, task)
            if info.get("random") is not None:
                note = f" ({info['random_note']})" if info.get("random_note") else ""
                section.notes.append(f"{task}: random guess {info.get('label', task)} = {_metric(info['random'])}"
                                     f"{note}")
    section.figures = _sweep_figures(sweeps)
    for sweep in sweeps:
        table, skipped = _sweep_table(sweep)
        section.tables.append(table)
        section.notes.extend(f"{sweep['meta']['label']} {text}" for text in skipped)
    return section


# --------------------------------------------------------------------------------------------- bench

def _bench_rows(path: Path, data) -> list[dict]:
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) and "model" in r and "median_ms" in r
                                                         for r in data):
        raise InvalidArgumentError(f"{path}: not a bench JSON (expected the list `onnxdepth bench --json` prints)")
    return data


def _bench_section(path: Path, rows: list[dict]) -> Section:
    from .plots import bench_plot

    names = [Path(r["model"]).name for r in rows]
    table = bench_table(rows, f"ONNX Runtime latency from {path.name}")
    figure = Figure(f"bench-{path.stem}", f"median latency per run ({path.name})",
                    bench_plot(names, [float(r["median_ms"]) for r in rows],
                               [float(r.get("p90_ms") or r["median_ms"]) for r in rows]))
    return Section(f"Benchmark: {path.name}", [f"{len(rows)} models, {rows[0].get('runs', '?')} interleaved runs each"],
                   [figure], [table])


# ---------------------------------------------------------------------------------------------- plans

def _plan_section(path: Path, plan: dict, model_path: Path | None) -> Section:
    from .plots import unit_grid_plot
    from .unitgrid import plan_layer_count, unit_grid

    steps = plan.get("steps") or []
    before, after = plan.get("params_before"), plan.get("params_after")
    section = Section(f"Pruned model: {path.name}")
    section.notes.append(
        f"{plan.get('method', 'depth pruning')}, granularity {plan.get('granularity', 'fine')}, importance "
        f"{plan.get('importance', '?')}, target ratio {plan.get('ratio', '?')}: "
        + (f"{before:,} -> {after:,} parameters ({_pct(1 - after / before)} removed), " if before and after else "")
        + f"{len(steps)} units pruned" + (f"; source {plan['source']}" if plan.get("source") else ""))
    grid = unit_grid(plan, plan_layer_count(plan, model_path))
    if grid is not None:
        title = f"{path.name}: units pruned per layer"
        section.figures.append(Figure(f"units-{path.stem}", f"{title} (thesis Figure 4.3; number = pruning step)",
                                      unit_grid_plot(grid, title)))
        columns = ["unit"] + [str(layer) for layer in range(grid.layers)]
        rows, classes = [], []
        for kind in grid.kinds:
            rows.append([kind] + [str(grid.order[(layer, kind)]) if grid.pruned(layer, kind) else ""
                                  for layer in range(grid.layers)])
            classes.append(["kind"] + ["pruned gone" if grid.layer_gone(layer) else "pruned"
                                       if grid.pruned(layer, kind) else "kept" for layer in range(grid.layers)])
        section.tables.append(Table(columns, rows, "units per layer: a number is the step that pruned the unit "
                                                   "(replaced by an identity); dark columns are whole layers",
                                    "grid", classes))
        gone = [str(layer) for layer in range(grid.layers) if grid.layer_gone(layer)]
        if gone:
            section.notes.append(f"whole layers pruned (identity, as coarse block pruning would): {', '.join(gone)}")
    total, removed, rows = before or 0, 0, []
    for number, step in enumerate(steps, start=1):
        removed += int(step.get("params_removed") or 0)
        detail = ", ".join(step.get("members") or []) or \
            (f"{step['removed_channels']} channels, coupled {', '.join(step.get('coupled_ops') or []) or 'none'}"
             if "removed_channels" in step else ", ".join(step.get("coupled_ops") or []))
        rows.append([str(number), str(step.get("unit", "")), f"{int(step.get('params_removed') or 0):,}",
                     _pct(removed / total) if total else "", detail])
    if rows:
        section.tables.append(Table(["step", "unit", "params removed", "cumulative reduction", "details"], rows,
                                    "pruning steps in order"))
    return section


# ----------------------------------------------------------------------------------------- collecting

def build_sections(inputs: list[str | os.PathLike]) -> list[Section]:
    """One section for all sweep directories (shared plots), one per bench JSON and per pruned model."""
    if not inputs:
        raise InvalidArgumentError("report needs at least one input")
    sweeps, others = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if not (path / SWEEP_FILE).is_file():
                raise InvalidArgumentError(f"{path}: not a sweep directory (no {SWEEP_FILE})")
            sweeps.append(_load_sweep(path))
        elif not path.is_file():
            raise InvalidArgumentError(f"{path}: no such file or directory")
        elif path.suffix == ".onnx":
            others.append(_plan_section(path, stored_plan(path), path))
        elif path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidArgumentError(f"{path}: not JSON") from exc
            if isinstance(data, dict) and "steps" in data:  # OUT.plan.json written by prune
                model = path.with_name(path.name.removesuffix(".plan.json") + ".onnx")
                others.append(_plan_section(path, data, model if model.is_file() else None))
            else:
                others.append(_bench_section(path, _bench_rows(path, data)))
        else:
            raise InvalidArgumentError(f"{path}: expected a sweep directory, a bench .json, a plan .json or a "
                                       "pruned .onnx")
    return ([_sweep_section(sweeps)] if sweeps else []) + others


def _unique_slugs(sections: list[Section], prefix: str) -> dict[int, str]:
    """id(figure) -> PNG file name, unique within the report."""
    names, used = {}, set()
    for section in sections:
        for figure in section.figures:
            stem = prefix + "".join(c if c.isalnum() or c in "-_." else "-" for c in figure.slug)
            name, n = f"{stem}.png", 2
            while name in used:
                name, n = f"{stem}-{n}.png", n + 1
            used.add(name)
            names[id(figure)] = name
    return names


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;padding:0 16px}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,caption{color:#555;font-size:.9em;text-align:left;padding:4px 0}
.scroll{overflow-x:auto;margin:12px 0}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left;white-space:nowrap}
table.grid td{text-align:center;min-width:1.6em;padding:2px 4px}
table.grid td.kind{text-align:left;font-weight:600}table.grid td.kept{background:#e8e8e8}
table.grid td.pruned{background:#d62728;color:#fff}table.grid td.gone{background:#8c1515}
ul.notes{color:#444}footer{color:#888;font-size:.8em;margin-top:3em}
"""


def render_html(sections: list[Section], title: str = "onnxdepth report") -> str:
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
            parts.append(f"<ul class=\"notes\">{items}</ul>")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(figure.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
        parts.extend(html_table(t) for t in section.tables)
        parts.append("</section>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<footer>onnxdepth {__version__}, {stamp}</footer></body></html>\n")
    return "".join(parts)


# ------------------------------------------------------------------------------------------ Markdown

def render_markdown(sections: list[Section], names: dict[int, str], title: str = "onnxdepth report") -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        if section.notes:
            parts.append("\n".join(f"- {n}" for n in section.notes))
        for figure in section.figures:
            parts.append(f"![{md_escape(figure.caption)}]({names[id(figure)]})\n\n*{md_escape(figure.caption)}*")
        parts.extend(markdown_table(t) for t in section.tables)
    return "\n\n".join(parts) + "\n"


def write_report(inputs: list[str | os.PathLike], out: str | os.PathLike, *, plot_prefix: str | None = None,
                 title: str = "onnxdepth report") -> list[Path]:
    """Write OUT (HTML), OUT with .md, and the plots as PNG files beside it, named PLOT_PREFIX + slug
    (default ``OUT-stem-``). Returns the paths written."""
    from .graph.io import check_output_path

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot create {out.parent} ({exc.strerror or exc})") from exc
    out = check_output_path(out)
    sections = build_sections(inputs)
    prefix = f"{out.stem}-" if plot_prefix is None else plot_prefix
    names = _unique_slugs(sections, prefix)
    written = []
    for section in sections:
        for figure in section.figures:
            written.append(write_atomic(out.parent / names[id(figure)], figure.png))
    written.append(write_atomic(out.with_suffix(".md"), render_markdown(sections, names, title)))
    written.append(write_atomic(out, render_html(sections, title)))
    return written
