"""`onnxdepth sweep`: prune one model at many ratios and methods, evaluate and time every point.

Points are (method, target ratio). Transformers: one method per granularity (fine, sublayer, block).
Other models (CNNs): granularity does not apply; the method is ``full`` (every prunable unit). The
unpruned model is the first point (method ``unpruned``, ratio 0) and the reference of every other.

Output directory layout (the format itself lives in `sweep_dir`, which `report` reads too)::

    DIR/sweep.json     the arguments, their hash, the tasks and their random-guess scores
    DIR/points.jsonl   one JSON row per point, rewritten atomically after every point (resumable)
    DIR/points.csv     the same rows as a table
    DIR/models/        the pruned models and their plans (reused by api.prune_file_cached)
    DIR/report.html    self-contained report; DIR/report.md with the plots as DIR/<task>.png, latency.png

A rerun with the same arguments skips the points already in points.jsonl; different arguments are
refused (the hash in sweep.json), so one directory never mixes two sweeps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import api
from .config import Calibration, PruneConfig
from .errors import InvalidArgumentError, OutputWriteError, RatioUnreachableError, VerificationError
from .eval import tasks
from .fileio import write_atomic, write_json_atomic
from .runtime import progress as progress_bar
from .scores import ScoreTable
from .strategies import strategy_for
from .sweep_dir import (BASELINE, CSV_FILE, FORMAT_VERSION, MODELS_DIR, POINTS_FILE, SWEEP_FILE, clean, points_csv,
                        read_meta, read_points, row_order, write_points)

__all__ = ["SweepConfig", "parse_ratios", "parse_names", "run_sweep", "read_points", "cnn_methods", "BASELINE",
           "SWEEP_FILE", "POINTS_FILE", "CSV_FILE", "MODELS_DIR", "GRANULARITY_METHODS", "SEARCH_SPACE_METHODS"]

logger = logging.getLogger(__name__)

GRANULARITY_METHODS = ("fine", "sublayer", "block")
# A ratio range includes its stop when the last step lands within this of it (0:0.48:0.06 has 9 points).
RATIO_EPS = 1e-9


def parse_ratios(spec: str) -> list[float]:
    """``start:stop:step`` (stop included when reached within RATIO_EPS) or a comma list; sorted, unique."""
    text = spec.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0:
                raise InvalidArgumentError(f"--ratios {spec}: the step must be > 0")
            # k-th point = start + k * step, computed by multiplication so errors do not accumulate
            count = int(math.floor((stop - start) / step + RATIO_EPS)) + 1 if stop >= start - RATIO_EPS else 0
            values = [start + k * step for k in range(max(count, 0))]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(f"--ratios {spec}: expected START:STOP:STEP or a comma list of ratios") from exc
    ratios = sorted({round(v, 9) for v in values})  # 0.06 * 3 = 0.18000000000000002 -> 0.18
    if not ratios:
        raise InvalidArgumentError(f"--ratios {spec}: no ratios")
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad:
        raise InvalidArgumentError(f"--ratios {spec}: {bad[0]:g} is outside [0, 1)")
    return ratios


def parse_names(spec: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """A comma list (order kept, duplicates dropped), each in ALLOWED when given."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise InvalidArgumentError(f"{what}: empty list")
    if allowed is not None:
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise InvalidArgumentError(f"{what} {unknown[0]}: expected one of {', '.join(allowed)}")
    return names


#: Methods of a CNN sweep: search spaces (every unit, or the thesis's baseline of units that keep the
#: channel count, Table 4.4).
SEARCH_SPACE_METHODS = ("full", "reduced")


def cnn_methods(search_spaces: list[str] | None = None) -> list[str]:
    """Methods of a non-transformer sweep: the chosen search spaces (default: full only)."""
    return list(search_spaces) if search_spaces else ["full"]


@dataclass
class SweepConfig:
    model: str
    ratios: list[float]
    granularities: list[str] = field(default_factory=lambda: ["fine"])
    tasks: list[str] = field(default_factory=list)
    importance: str = "magnitude"
    calib: str | None = None
    calib_sequences: int = 32
    calib_length: int = 128
    exclude: str | None = None
    input_shapes: dict | None = None
    eval_options: dict[str, Any] = field(default_factory=dict)
    bench_runs: int = 10
    threads: int | None = None
    seed: int = 0
    search_spaces: list[str] | None = None  # CNNs: full and/or reduced (None: full)

    def identity(self) -> dict:
        """Everything that changes a point's numbers; its hash guards a sweep directory."""
        model = Path(self.model).resolve()
        stat = model.stat()
        data = asdict(self)
        if data["search_spaces"] is None:
            del data["search_spaces"]  # the default leaves the digest of earlier sweeps unchanged
        data.update(model=str(model), model_bytes=stat.st_size, model_mtime_ns=stat.st_mtime_ns,
                    calib=str(Path(self.calib).resolve()) if self.calib else None,
                    input_shapes={k: list(v) for k, v in (self.input_shapes or {}).items()} or None)
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_label(path: str | Path) -> str:
    """A short name: the file stem, or the directory for exports named model.onnx."""
    path = Path(path)
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


# -------------------------------------------------------------------------------------------- sweep

@dataclass
class _Context:
    config: SweepConfig
    source: Path
    out_dir: Path
    methods: list[str]
    transformer: bool
    params_before: int
    options: dict
    unreachable: dict[str, float] = field(default_factory=dict)  # method -> largest reachable reduction
    scores: dict[str, dict] = field(default_factory=dict)  # method -> unit scores (angular, computed once)
    prepared: set[str] = field(default_factory=set)  # methods whose models were pruned in one run


def _prune_config(ctx: _Context, method: str, ratio: float) -> PruneConfig:
    """The PruneConfig of METHOD's point at RATIO."""
    config = ctx.config
    calibration = Calibration(config.calib, config.calib_sequences, config.calib_length, config.seed,
                              str(ctx.source))
    return PruneConfig(ratio=ratio, granularity=method if ctx.transformer else "fine", importance=config.importance,
                       exclude=config.exclude, input_shapes=config.input_shapes, seed=config.seed,
                       calibration=calibration, search_space="reduced" if method == "reduced" else "full")


def _scores(ctx: _Context, method: str, prune_config: PruneConfig) -> ScoreTable | None:
    """Unit scores of a calibration-data metric (angular), computed once per method for all ratios."""
    from .importance import UNIT_METRICS

    if ctx.config.importance not in UNIT_METRICS:
        return None
    if method not in ctx.scores:
        from .graph.io import load_model

        ctx.scores[method] = api.score_model(load_model(ctx.source), prune_config)
    return ctx.scores[method]


def _model_path(ctx: _Context, method: str, ratio: float) -> Path:
    return ctx.out_dir / MODELS_DIR / f"{method}-{ratio:.4f}.onnx"


def _is_cached(ctx: _Context, method: str, ratio: float) -> bool:
    return api.cached_plan(ctx.source, _model_path(ctx, method, ratio),
                           _prune_config(ctx, method, ratio)) is not None


def _prepare_models(ctx: _Context, method: str, ratios: list[float]) -> None:
    """Prune once to the largest of RATIOS and write the model at every smaller one on the way.

    A smaller ratio's selection is a prefix of a larger one's (prune_model's checkpoints), so one run
    gives every point's model, as separate runs would, and the scoring is paid once. The files are the
    ones api.prune_file_cached then reuses. Gromov's contiguous block choice depends on the ratio and is
    pruned per point instead.
    """
    from .graph.io import load_model, save_model_atomic

    pending = sorted(r for r in ratios if 0.0 < r <= ctx.unreachable.get(method, math.inf)
                     and not _is_cached(ctx, method, r))
    if len(pending) < 2:
        return
    config = _prune_config(ctx, method, pending[-1])
    if not strategy_for(config, ctx.transformer).prefix_stable:
        return  # Gromov's contiguous runs: a smaller ratio's run is not a prefix of a larger one's
    scores = _scores(ctx, method, config)

    def save(ratio: float, result: api.PruneResult) -> None:
        out = _model_path(ctx, method, ratio)
        result.plan["source"] = str(ctx.source)  # as prune_file records it: the cache key
        save_model_atomic(result.model, out)
        write_json_atomic(api.plan_path_for(out), result.plan)

    try:
        final = api.prune_model(load_model(ctx.source), config, scores=scores, checkpoints=pending[:-1],
                                on_checkpoint=save)
        save(pending[-1], final)
    except RatioUnreachableError as exc:  # the checkpoints below the reachable reduction were written
        ctx.unreachable[method] = exc.reachable
    except VerificationError as exc:  # the points without a model are pruned one by one (and recorded failed)
        logger.warning("%s: pruning in one run failed verification (%s); pruning point by point", method, exc)


def _skipped(method: str, ratio: float, reachable: float, started: float) -> dict:
    return {"method": method, "ratio": ratio, "status": "skipped", "reachable": round(reachable, 6),
            "reason": f"not reachable (largest reachable reduction {reachable:.4f})",
            "seconds": round(time.perf_counter() - started, 3), "time": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _scalars(result: dict) -> dict:
    """The evaluator's top-level numbers and strings (per-item details stay out of points.jsonl)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _run_point(ctx: _Context, method: str, ratio: float) -> dict:
    from .bench import bench_models

    started = time.perf_counter()
    config = ctx.config
    if method == BASELINE:
        path, params, units = ctx.source, ctx.params_before, 0
    else:
        if ratio > ctx.unreachable.get(method, math.inf):
            return _skipped(method, ratio, ctx.unreachable[method], started)
        out = _model_path(ctx, method, ratio)
        prune_config = _prune_config(ctx, method, ratio)
        scores = None if _is_cached(ctx, method, ratio) else _scores(ctx, method, prune_config)
        try:
            path, plan, _ = api.prune_file_cached(ctx.source, out, prune_config, scores=scores)
        except RatioUnreachableError as exc:
            ctx.unreachable[method] = exc.reachable
            return _skipped(method, ratio, exc.reachable, started)
        params, units = int(plan["params_after"]), len(plan.get("steps") or [])
    pruned_at = time.perf_counter()
    metrics, evals = {}, {}
    for task in config.tasks:
        result = tasks.evaluate(task, path, reference=ctx.source, options=ctx.options)
        metrics[task] = result["value"]
        evals[task] = _scalars(result)
    evaluated_at = time.perf_counter()
    # Interleaved with the unpruned model, so that machine noise hits both alike.
    models = [str(ctx.source)] if method == BASELINE else [str(ctx.source), str(path)]
    bench = bench_models(models, runs=config.bench_runs, warmup=1, threads=config.threads,
                         input_shapes=config.input_shapes)
    done = time.perf_counter()
    row = {"method": method, "ratio": ratio, "status": "ok", "reduction": round(1.0 - params / ctx.params_before, 6),
           "params": params, "params_before": ctx.params_before, "units": units, "file_mb": round(bench[-1].file_mb, 4),
           "latency_ms": bench[-1].median_ms, "latency_p90_ms": bench[-1].p90_ms,
           "baseline_latency_ms": bench[0].median_ms, "latency_vs_unpruned": bench[-1].vs_first,
           "metrics": metrics, "evals": evals,
           "model": os.path.relpath(path, ctx.out_dir) if method != BASELINE else str(path),
           "seconds": round(done - started, 3), "prune_s": round(pruned_at - started, 3),
           "eval_s": round(evaluated_at - pruned_at, 3), "bench_s": round(done - evaluated_at, 3), "time": _now()}
    return clean(row)


def _check_directory(out_dir: Path, config: SweepConfig, digest: str) -> dict | None:
    """The existing sweep.json when it was written with the same arguments; an error when not."""
    sweep_file, points_file = out_dir / SWEEP_FILE, out_dir / POINTS_FILE
    if not sweep_file.exists():
        if points_file.exists():
            raise InvalidArgumentError(f"{out_dir}: has {POINTS_FILE} but no {SWEEP_FILE}; not a sweep directory "
                                       "(use another -o DIR)")
        return None
    try:
        previous = json.loads(sweep_file.read_text())
        old_hash, old_config = previous["hash"], previous["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{sweep_file}: unreadable; not a sweep directory (use another -o DIR)") from exc
    if old_hash != digest:
        new_config = json.loads(json.dumps(config.identity(), default=str))
        changed = sorted(k for k in set(old_config) | set(new_config) if old_config.get(k) != new_config.get(k))
        details = "; ".join(f"{k}: {old_config.get(k)!r} -> {new_config.get(k)!r}" for k in changed[:4])
        raise InvalidArgumentError(f"{out_dir} holds a sweep made with different arguments ({details or 'version'}); "
                                   "rerun with the same arguments to resume it, or give another -o DIR")
    return previous


def _validate(config: SweepConfig) -> None:
    if config.bench_runs < 1:
        raise InvalidArgumentError(f"--bench-runs {config.bench_runs}: must be >= 1")
    if config.threads is not None and config.threads < 1:
        raise InvalidArgumentError(f"--threads {config.threads}: must be >= 1")
    parse_names(",".join(config.granularities), "--granularity", GRANULARITY_METHODS)
    for task in config.tasks:
        tasks.check_options(task, config.eval_options)
    if config.calib and not Path(config.calib).is_file():
        raise InvalidArgumentError(f"--calib {config.calib}: no such file")
    from .importance import get_metric

    get_metric(config.importance)


def _open_directory(config: SweepConfig, out_dir: Path) -> _Context:
    """Check the arguments and OUT_DIR, write its sweep.json, and the context every point runs in."""
    from .graph.io import check_output_path, load_model
    from .prune.session import PruneSession

    _validate(config)
    model = load_model(config.model)  # one-line errors for a missing or broken model
    source = Path(config.model).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputWriteError(f"{out_dir}: is not a directory")
    try:
        (out_dir / MODELS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"{out_dir}: cannot create ({exc.strerror or exc})") from exc
    check_output_path(out_dir / POINTS_FILE, source)
    digest = config.digest()
    previous = _check_directory(out_dir, config, digest)

    session = PruneSession(model, exclude=config.exclude, input_shapes=config.input_shapes)
    transformer = bool(session.layers)
    if not transformer and config.granularities != ["fine"]:
        logger.warning("--granularity is ignored: %s has no transformer layers", source.name)
    methods = list(config.granularities) if transformer else cnn_methods(config.search_spaces)
    options = {k: v for k, v in config.eval_options.items() if v is not None}
    options.setdefault("threads", config.threads)
    task_info = {t: {**tasks.get_task(t).describe(), "random": tasks.random_line(t, source, options)}
                 for t in config.tasks}
    meta = {"format": FORMAT_VERSION, "hash": digest, "config": json.loads(json.dumps(config.identity(), default=str)),
            "label": model_label(source), "model": str(source), "kind": "transformer" if transformer else "cnn",
            "methods": methods, "tasks": task_info, "params_before": session.params_before,
            "created": previous.get("created") if previous else _now()}
    write_json_atomic(out_dir / SWEEP_FILE, meta)
    return _Context(config, source, out_dir, methods, transformer, session.params_before, options)


def _resumed_points(ctx: _Context) -> dict[tuple, dict]:
    """The finished points of an earlier run (failed ones are retried), keyed by (method, ratio); their
    recorded reachable reductions go into CTX."""
    rows = read_points(ctx.out_dir / POINTS_FILE)
    done = {(r["method"], float(r["ratio"])): r for r in rows if r.get("status") in ("ok", "skipped")}
    for row in done.values():
        if row.get("status") == "skipped" and row.get("reachable") is not None:
            ctx.unreachable[row["method"]] = min(ctx.unreachable.get(row["method"], math.inf), row["reachable"])
    return done


def _new_point(ctx: _Context, method: str, ratio: float, pending: list[float], bar) -> dict:
    """Run one point not done before (the method's one pruning run first, when it has not run yet); a pruned
    model that fails verification is a recorded failure, not an error."""
    batch_seconds = 0.0
    if method != BASELINE and method not in ctx.prepared:
        bar.note(f"{method}: pruning (one run for all ratios)")
        started = time.perf_counter()
        _prepare_models(ctx, method, pending)
        ctx.prepared.add(method)
        batch_seconds = time.perf_counter() - started
    bar.note(f"{method} {ratio:g}")
    try:
        row = _run_point(ctx, method, ratio)
    except VerificationError as exc:  # a pruned model failed verification: record it, go on
        if method == BASELINE:
            raise
        row = {"method": method, "ratio": ratio, "status": "failed", "reason": str(exc), "time": _now()}
    if batch_seconds:  # the method's one pruning run is booked on its first point
        row["prune_s"] = round(row.get("prune_s", 0.0) + batch_seconds, 3)
        row["seconds"] = round(row.get("seconds", 0.0) + batch_seconds, 3)
    return row


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike, *, progress: bool = False,
              on_point: Callable[[dict, bool], None] | None = None) -> dict:
    """Run (or resume) the sweep into OUT_DIR and write its table, plots and report.

    ON_POINT(row, resumed) is called for every point, resumed ones included. Returns
    ``{"rows": [...], "files": [paths written], "new_points": n}``.
    """
    out_dir = Path(out_dir)
    ctx = _open_directory(config, out_dir)
    done = _resumed_points(ctx)
    rows = list(done.values())
    todo = [(BASELINE, 0.0)] + [(m, r) for m in ctx.methods for r in config.ratios if r > 0.0]
    new_points = 0
    with progress_bar(len(todo), "sweep", progress) as bar:
        for method, ratio in todo:
            key = (method, ratio)
            if key in done:
                bar.advance()
                if on_point is not None:
                    on_point(done[key], True)
                continue
            pending = [r for m, r in todo if m == method and (m, r) not in done]
            row = _new_point(ctx, method, ratio, pending, bar)
            rows = [r for r in rows if (r["method"], float(r["ratio"])) != key] + [row]
            write_points(out_dir / POINTS_FILE, rows)
            new_points += 1
            bar.advance()
            if on_point is not None:
                on_point(row, False)
    files = finish(out_dir)
    return {"rows": sorted(rows, key=row_order), "files": files, "new_points": new_points}


def finish(out_dir: str | os.PathLike) -> list[Path]:
    """points.csv, plots and report of the sweep in OUT_DIR (also after an interrupted run)."""
    from .report import write_report

    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    rows = read_points(out_dir / POINTS_FILE)
    csv_path = write_atomic(out_dir / CSV_FILE, points_csv(rows, list(meta.get("tasks", {}))))
    return [csv_path, *write_report([out_dir], out_dir / "report.html", plot_prefix="")]
