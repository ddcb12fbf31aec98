"""The subcommands behind `onnxdepth`: each `_cmd_*` turns parsed arguments into library calls and prints."""

from __future__ import annotations

import functools
import json
import sys
import time

from ..errors import InvalidArgumentError

__all__ = ["_cmd_bench", "_cmd_demo", "_cmd_eval", "_cmd_export", "_cmd_prune", "_cmd_report", "_cmd_score", "_cmd_sweep", "_cmd_units"]


def _input_shapes(values: list[str] | None) -> dict | None:
    """Parse --input-shape NAME:1x3x320x320 (repeatable)."""
    if not values:
        return None
    shapes = {}
    for value in values:
        name, _, dims = value.rpartition(":")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError as exc:
            raise InvalidArgumentError(f"--input-shape {value!r}: expected NAME:DxDxD") from exc
        if not name or any(d <= 0 for d in shapes[name]):
            raise InvalidArgumentError(f"--input-shape {value!r}: expected NAME:DxDxD with positive dims")
    return shapes


def _cmd_units(args) -> int:
    from ..api import list_units, units_summary
    from ..graph.io import load_model

    model = load_model(args.model)
    units = list_units(model, exclude=args.exclude, input_shapes=_input_shapes(args.input_shape),
                       granularity=args.granularity, search_space=args.search_space, head=args.head)
    summary = units_summary(units)
    if args.json:
        print(json.dumps({"units": [u.to_json() for u in units], "summary": summary}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"units of {args.model}")
    for column in ("id", "kind", "op", "params", "in", "out", "changes ch.", "prunable", "excluded because"):
        table.add_column(column)
    for u in units:
        table.add_row(u.id, u.kind, u.op, f"{u.params:,}", str(u.in_channels), str(u.out_channels),
                      "yes" if u.changes_channels else "", "yes" if u.prunable else "no", u.excluded_reason or "")
    console = Console()
    console.print(table)
    console.print(f"candidates {summary['candidates']}  excluded {summary['excluded']}  "
                  f"prunable {summary['prunable']}  reduced search space {summary['prunable_reduced']}  "
                  f"(graph head {summary['head']}, user excluded {summary['user_excluded']})")
    return 0


def _calibration(args, model_path: str | None = None):
    from ..config import Calibration

    return Calibration(source=args.calib, sequences=args.calib_sequences, length=args.calib_length, seed=args.seed,
                       model_path=model_path)


def _prune_config(args, ratio: float):
    """The PruneConfig of a `prune` or `score` command line (score has no selection flags)."""
    from ..config import PruneConfig

    selection = {name: getattr(args, name) for name in ("ordering", "ranking", "rescore_every", "shortlist",
                                                        "block_choice", "compensate", "workers", "ray_address",
                                                        *_LATENCY_FLAGS)
                 if hasattr(args, name)}
    return PruneConfig(ratio=ratio, importance=args.importance, granularity=args.granularity,
                       search_space=args.search_space, exclude=args.exclude,
                       input_shapes=_input_shapes(args.input_shape), seed=args.seed,
                       calibration=_calibration(args, args.input if hasattr(args, "input") else args.model),
                       **selection)


#: `prune` flags of the latency objective and the head rule, passed to the PruneConfig as they are.
_LATENCY_FLAGS = ("head", "objective", "latency_ratio", "device", "profile_threads", "profile_runs")


def _latency_note(result) -> str:
    """The summary line's latency part (on the profile's accounting), when a profile was taken."""
    if result.latency_reduction is None:
        return ""
    return f", latency {result.latency_reduction:.2%} removed (profiled)"


def _cmd_prune(args) -> int:
    from ..api import prune_file, replay_file

    if args.ratio is None and args.latency_ratio is None and not args.plan and args.max_drop is None:
        raise InvalidArgumentError("prune needs --ratio R, --latency-ratio R, --max-drop D or --plan PLAN.json")
    if args.plan and args.max_drop is not None:
        raise InvalidArgumentError("--plan replays a saved plan: it takes no --max-drop")
    from .heal_command import heal_config_after_prune

    heal_config = heal_config_after_prune(args)  # checked before the pruning, not after it
    if args.bench:
        from ..runtime import providers_for

        providers_for(args.device)  # a missing provider is refused before any work
    if args.plan:
        plan, config = _read_plan(args.plan), None
    else:
        from ..budget import DEFAULT_UPPER

        upper = DEFAULT_UPPER if args.max_drop is not None else 0.0  # 0.0: the latency ratio alone
        config = _prune_config(args, args.ratio if args.ratio is not None else upper)
    scores = None
    if args.scores:
        from ..scores import ScoreTable

        scores = ScoreTable.read_csv(args.scores)
    progress = None
    if not args.json and sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(TextColumn("pruning"), BarColumn(), TextColumn("{task.description}"), transient=True)
    started = time.perf_counter()
    target = args.ratio or 1.0  # the bar follows the parameter reduction, also for a latency target
    task = None

    def on_step(plan, reduction):
        if progress is not None:
            progress.update(task, completed=min(reduction, target), description=f"{reduction:.1%} after {plan.unit_id}")
        elif not args.json:
            print(f"  pruned {plan.unit_id:<48} reduction {reduction:.2%}", file=sys.stderr)

    def run():
        if config is None:
            return replay_file(args.input, args.output, plan, input_shapes=_input_shapes(args.input_shape))
        prune = None
        if args.max_drop is not None:
            from ..budget import prune_within_drop

            prune = functools.partial(prune_within_drop, max_drop=args.max_drop, on_probe=on_probe)
        return prune_file(args.input, args.output, config, scores=scores, on_step=on_step, prune=prune)

    def on_probe(probe: dict) -> None:
        if not args.json:
            print(f"  --max-drop: {probe['steps']} steps ({probe['ratio']:.2%} of the parameters) drop "
                  f"{probe['drop']:.4f}", file=sys.stderr)

    if progress is not None:
        with progress:
            task = progress.add_task("", total=target)
            result = run()
    else:
        result = run()
    seconds = time.perf_counter() - started
    extra = {key: result.plan[key] for key in ("fidelity", "budget") if key in result.plan}
    if not args.json:
        _print_prune(args, result, extra, seconds)
    if heal_config is not None:
        from .heal_command import heal_after_prune

        extra["healing"] = heal_after_prune(args, heal_config)
    if args.bench:
        extra["bench"] = _quick_bench(args)
        if not args.json:
            _print_bench(extra["bench"])
    if args.json:
        print(json.dumps({**result.summary(), **extra}))
    return 0


def _print_prune(args, result, extra: dict, seconds: float) -> None:
    """The lines `prune` ends with: the summary, the fidelity line, the --max-drop search, the --bench ratio."""
    from pathlib import Path

    from ..api import plan_path_for
    from ..fidelity import fidelity_line

    print(f"{args.output}: {result.params_before:,} -> {result.params_after:,} parameters "
          f"({result.reduction:.2%} removed{_latency_note(result)}, {len(result.pruned_units)} units) "
          f"in {seconds:.1f}s; plan in {plan_path_for(Path(args.output))}")
    if "fidelity" in extra:
        print(fidelity_line(extra["fidelity"]))
    if "budget" in extra:
        budget = extra["budget"]
        print(f"--max-drop {budget['max_drop']:g}: chose {budget['chosen_ratio']:.2%} of the parameters "
              f"({budget['steps']} steps of a selection up to {budget['upper_ratio']:.2%}), drop {budget['drop']:.4f}; "
              f"{budget['selection_runs']} selection run(s), {len(budget['probes'])} measured prefixes")


def _print_bench(bench: dict) -> None:
    print(f"latency ({bench['device']}, {bench['runs']} interleaved runs): unpruned {bench['unpruned_ms']:.2f} ms, "
          f"pruned {bench['pruned_ms']:.2f} ms, ratio {bench['ratio']:.3f} "
          f"({abs(1 - bench['ratio']):.1%} {'faster' if bench['ratio'] <= 1 else 'slower'})")


#: `prune --bench`: interleaved runs of the two models (a quick look; `onnxdepth bench` for a full table).
QUICK_BENCH_RUNS = 10


def _quick_bench(args) -> dict:
    """Median latency of the unpruned and the pruned model, interleaved, on args.device."""
    from ..bench import bench_models

    rows = bench_models([args.input, args.output], runs=QUICK_BENCH_RUNS, warmup=2, threads=args.threads,
                        device=args.device, input_shapes=_input_shapes(args.input_shape))
    return {"device": args.device, "threads": args.threads, "runs": QUICK_BENCH_RUNS,
            "unpruned_ms": rows[0].median_ms, "pruned_ms": rows[1].median_ms, "ratio": rows[1].vs_first}


def _read_plan(path: str) -> dict:
    from pathlib import Path

    if not Path(path).exists():
        raise InvalidArgumentError(f"--plan {path}: no such file")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--plan {path}: not JSON") from exc


def _cmd_score(args) -> int:
    from ..api import score_model
    from ..fileio import write_atomic
    from ..graph.io import check_output_path, load_model

    if args.output:
        check_output_path(args.output)
    config = _prune_config(args, 0.0)
    table = score_model(load_model(args.model), config)
    if args.output:
        write_atomic(args.output, table.to_csv())
        print(f"{args.output}: {len(table)} unit scores ({args.importance})")
    else:
        print(table.to_csv(), end="")
    return 0


#: `eval` arguments passed to the task's evaluator as options (the registry reads what it needs).
_EVAL_OPTIONS = ("text", "tokenizer", "ctx", "stride", "max_tokens", "images", "imgsz", "image_dir", "labels",
                 "samples", "seed", "ocr_kind", "data", "dev", "shots", "scoring", "limit", "threads", "calib",
                 "calib_sequences", "calib_length")


def _cmd_eval(args) -> int:
    from ..eval import tasks

    options = {key: getattr(args, key) for key in _EVAL_OPTIONS}
    options["progress"] = not args.json and sys.stderr.isatty()
    result = tasks.evaluate(args.task, args.model, reference=args.reference, options=options, flag="--task")
    return _print_result(args, *tasks.summarize(result))


def _print_result(args, summary: dict, line: str) -> int:
    """An eval result on stdout: SUMMARY as one JSON object with --json, else LINE."""
    print(json.dumps(summary) if args.json else line)
    return 0


def _cmd_bench(args) -> int:
    from ..bench import bench_models, render_html, render_table

    if args.html:
        from ..graph.io import check_output_path

        check_output_path(args.html)
    rows = bench_models(args.models, runs=args.runs, warmup=args.warmup, threads=args.threads, device=args.device,
                        input_shapes=_input_shapes(args.input_shape), data=args.data, batch_size=args.batch_size,
                        batches=args.batches, progress=not args.json and sys.stderr.isatty())
    if args.html:
        from ..fileio import write_atomic

        write_atomic(args.html, render_html(rows))
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
    else:
        print(render_table(rows))
    return 0


def _option_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _eval_options(args) -> dict:
    """The evaluator options of `sweep` (named flags, then --option KEY=VALUE); paths made absolute."""
    import os

    options = {"text": args.text, "tokenizer": args.tokenizer, "data": args.data}
    options = {k: os.path.abspath(v) for k, v in options.items() if v}
    options.update(ctx=args.ctx, stride=args.stride, max_tokens=args.max_tokens, limit=args.limit,
                   images=args.images, imgsz=args.imgsz)
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = _option_value(value.strip())
    return {k: v for k, v in options.items() if v is not None}


def _cmd_sweep(args) -> int:
    from ..sweep import GRANULARITY_METHODS, SEARCH_SPACE_METHODS, SweepConfig, parse_names, parse_ratios, run_sweep

    config = SweepConfig(
        model=args.model, ratios=parse_ratios(args.ratios),
        granularities=parse_names(args.granularity, "--granularity", GRANULARITY_METHODS),
        tasks=[] if args.eval.strip() == "none" else parse_names(args.eval, "--eval"),  # checked by the registry
        importance=args.importance, calib=args.calib, calib_sequences=args.calib_sequences,
        calib_length=args.calib_length, exclude=args.exclude, input_shapes=_input_shapes(args.input_shape),
        eval_options=_eval_options(args), bench_runs=args.bench_runs, threads=args.threads, seed=args.seed,
        search_spaces=parse_names(args.search_space, "--search-space", SEARCH_SPACE_METHODS)
        if args.search_space else None)
    interactive = sys.stderr.isatty()

    def on_point(row, resumed):
        if interactive:
            return
        what = "done before" if resumed else row.get("status")
        metrics = " ".join(f"{k} {v:.4g}" for k, v in (row.get("metrics") or {}).items() if v is not None)
        reduction = f" reduction {row['reduction']:.2%}" if row.get("reduction") is not None else ""
        print(f"  {row['method']:<9} {float(row['ratio']):.4f}: {what}{reduction} {metrics}".rstrip(), file=sys.stderr)

    try:
        result = run_sweep(config, args.output, progress=interactive, on_point=on_point)
    except KeyboardInterrupt:
        print(f"onnxdepth: interrupted; finished points are kept in {args.output}/points.jsonl (rerun the same "
              "command to resume)", file=sys.stderr)
        return 130
    ok = sum(1 for r in result["rows"] if r.get("status") == "ok")
    print(f"{args.output}: {len(result['rows'])} points ({ok} ok, {result['new_points']} new); "
          f"points.csv, report.html, report.md and {sum(1 for f in result['files'] if f.suffix == '.png')} plots")
    return 0


def _cmd_report(args) -> int:
    from ..report import write_report

    written = write_report(args.inputs, args.output, title=args.title)
    plots = sum(1 for path in written if path.suffix == ".png")
    print(f"{args.output}: report of {len(args.inputs)} input(s); {written[-2].name} and {plots} plot(s) beside it")
    return 0


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    from pathlib import Path

    from ..demo import SHARED_DATA

    return run_demo(ratio=args.ratio, runs=args.runs, threads=args.threads,
                    data_dir=Path(args.data_dir) if args.data_dir else SHARED_DATA)


def _cmd_export(args) -> int:
    if args.source == "ultralytics":
        from pathlib import Path

        from ..export.ultralytics import export_ultralytics

        path = export_ultralytics(args.src, Path(args.out), imgsz=args.imgsz, opset=args.opset)
        print(path)
        return 0
    from pathlib import Path

    from ..export.hf import export_hf

    path = export_hf(args.src, Path(args.out), task=args.task, opset=args.opset, overwrite=args.overwrite)
    print(path)
    return 0


