"""Command line: onnxdepth units | prune | export. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import __version__
from .config import BLOCK_CHOICES, COMPENSATIONS, GRANULARITIES, ORDERINGS, RANKINGS, SEARCH_SPACES
from .errors import InvalidArgumentError, OnnxDepthError, RatioUnreachableError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3


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
    from .api import list_units, units_summary
    from .graph.io import load_model

    model = load_model(args.model)
    units = list_units(model, exclude=args.exclude, input_shapes=_input_shapes(args.input_shape),
                       granularity=args.granularity, search_space=args.search_space)
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
    from .config import Calibration

    return Calibration(source=args.calib, sequences=args.calib_sequences, length=args.calib_length, seed=args.seed,
                       model_path=model_path)


def _prune_config(args, ratio: float):
    """The PruneConfig of a `prune` or `score` command line (score has no selection flags)."""
    from .config import PruneConfig

    selection = {name: getattr(args, name) for name in ("ordering", "ranking", "rescore_every", "shortlist",
                                                        "block_choice", "compensate") if hasattr(args, name)}
    return PruneConfig(ratio=ratio, importance=args.importance, granularity=args.granularity,
                       search_space=args.search_space, exclude=args.exclude,
                       input_shapes=_input_shapes(args.input_shape), seed=args.seed,
                       calibration=_calibration(args, args.input if hasattr(args, "input") else args.model),
                       **selection)


def _cmd_prune(args) -> int:
    from pathlib import Path

    from .api import plan_path_for, prune_file, replay_file

    if args.ratio is None and not args.plan:
        raise InvalidArgumentError("prune needs --ratio R (or --plan PLAN.json)")
    if args.plan:
        plan, config = _read_plan(args.plan), None
    else:
        config = _prune_config(args, args.ratio)
    scores = None
    if args.scores:
        from .scores import ScoreTable

        scores = ScoreTable.read_csv(args.scores)
    progress = None
    if not args.json and sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(TextColumn("pruning"), BarColumn(), TextColumn("{task.description}"), transient=True)
    started = time.perf_counter()
    target = args.ratio or 1.0
    task = None

    def on_step(plan, reduction):
        if progress is not None:
            progress.update(task, completed=min(reduction, target), description=f"{reduction:.1%} after {plan.unit_id}")
        elif not args.json:
            print(f"  pruned {plan.unit_id:<48} reduction {reduction:.2%}", file=sys.stderr)

    def run():
        if config is None:
            return replay_file(args.input, args.output, plan, input_shapes=_input_shapes(args.input_shape))
        return prune_file(args.input, args.output, config, scores=scores, on_step=on_step)

    if progress is not None:
        with progress:
            task = progress.add_task("", total=target)
            result = run()
    else:
        result = run()
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(f"{args.output}: {result.params_before:,} -> {result.params_after:,} parameters "
              f"({result.reduction:.2%} removed, {len(result.pruned_units)} units) "
              f"in {time.perf_counter() - started:.1f}s; plan in {plan_path_for(Path(args.output))}")
    return 0


def _read_plan(path: str) -> dict:
    from pathlib import Path

    if not Path(path).exists():
        raise InvalidArgumentError(f"--plan {path}: no such file")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--plan {path}: not JSON") from exc


def _cmd_score(args) -> int:
    from .api import score_model
    from .fileio import write_atomic
    from .graph.io import check_output_path, load_model

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
                 "samples", "seed", "ocr_kind", "data", "dev", "shots", "scoring", "limit", "threads")


def _cmd_eval(args) -> int:
    from .eval import tasks

    options = {key: getattr(args, key) for key in _EVAL_OPTIONS}
    options["progress"] = not args.json and sys.stderr.isatty()
    result = tasks.evaluate(args.task, args.model, reference=args.reference, options=options, flag="--task")
    return _print_result(args, *tasks.summarize(result))


def _print_result(args, summary: dict, line: str) -> int:
    """An eval result on stdout: SUMMARY as one JSON object with --json, else LINE."""
    print(json.dumps(summary) if args.json else line)
    return 0


def _cmd_bench(args) -> int:
    from .bench import bench_models, render_html, render_table

    if args.html:
        from .graph.io import check_output_path

        check_output_path(args.html)
    rows = bench_models(args.models, runs=args.runs, warmup=args.warmup, threads=args.threads, device=args.device,
                        input_shapes=_input_shapes(args.input_shape), data=args.data, batch_size=args.batch_size,
                        batches=args.batches, progress=not args.json and sys.stderr.isatty())
    if args.html:
        from .fileio import write_atomic

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
    from .sweep import GRANULARITY_METHODS, SEARCH_SPACE_METHODS, SweepConfig, parse_names, parse_ratios, run_sweep

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
    from .report import write_report

    written = write_report(args.inputs, args.output, title=args.title)
    plots = sum(1 for path in written if path.suffix == ".png")
    print(f"{args.output}: report of {len(args.inputs)} input(s); {written[-2].name} and {plots} plot(s) beside it")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(ratio=args.ratio, granularity=args.granularity, runs=args.runs, threads=args.threads)


def _cmd_export(args) -> int:
    if args.source == "ultralytics":
        from pathlib import Path

        from .export.ultralytics import export_ultralytics

        path = export_ultralytics(args.src, Path(args.out), imgsz=args.imgsz, opset=args.opset)
        print(path)
        return 0
    from pathlib import Path

    from .export.hf import export_hf

    path = export_hf(args.src, Path(args.out), task=args.task, opset=args.opset, overwrite=args.overwrite)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .eval import tasks
    from .eval.multiple_choice import SCORINGS
    from .eval.ocr import OCR_KINDS
    from .export.hf import TASKS as HF_TASKS
    from .runtime import DEVICES

    parser = argparse.ArgumentParser(prog="onnxdepth", description="Fine-grained depth pruning of ONNX models.")
    parser.add_argument("--version", action="version", version=f"onnxdepth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--exclude", metavar="REGEX", help="exclude units whose id (node name) matches REGEX")
        p.add_argument("--granularity", default="fine", choices=GRANULARITIES,
                       help="transformers: attention + MLP sub-layers (fine, Algorithm 8), attention + MLP "
                            "(sublayer), whole layers (block)")
        p.add_argument("--search-space", default="full", choices=SEARCH_SPACES,
                       help="CNNs: every unit (full) or only units that keep the channel count (reduced, the "
                            "thesis's baseline)")
        p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                       help="concrete shape for a dynamic graph input (repeatable)")

    def calibration(p):
        p.add_argument("--calib", help="calibration data: text models .txt, .jsonl (text field) or .npz "
                                       "(input_ids), default text sampled from the model itself (seeded); image "
                                       "models a folder of images or .npz (images), default packaged photos")
        p.add_argument("--calib-sequences", type=int, default=32, help="calibration sequences (default 32)")
        p.add_argument("--calib-length", type=int, default=128, help="tokens per sequence (default 128)")

    p = sub.add_parser("units", help="list pruning units and why some are excluded")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=_cmd_units)

    p = sub.add_parser("prune", help="remove RATIO of the parameters by deleting whole layers")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ratio", type=float, default=None, help="target parameter reduction in [0, 1)")
    p.add_argument("--plan", help="replay a saved plan (OUT.plan.json) exactly instead of selecting units")
    p.add_argument("--importance", default="magnitude",
                   help="magnitude, angular, cross_entropy or taylor (default: magnitude)")
    p.add_argument("--ordering", default="ascending", choices=ORDERINGS,
                   help="visit units by ascending score (the method), descending or random (ablations)")
    p.add_argument("--seed", type=int, default=0, help="seed for --ordering random and sampled calibration")
    p.add_argument("--scores", help="reuse a score table from `onnxdepth score` (CSV unit,score)")
    p.add_argument("--rescore-every", type=int, default=None, metavar="N",
                   help="re-estimate angular or cross_entropy importance on the model pruned so far after every "
                        "N pruned units (fine granularity; cross_entropy makes it a greedy search)")
    p.add_argument("--shortlist", type=int, default=None, metavar="K",
                   help="with --rescore-every: after the first round, re-score only the K best moves of the "
                        "previous round (a lazy greedy search; default: re-score all)")
    p.add_argument("--ranking", default="split", choices=RANKINGS,
                   help="transformers: separate attention/MLP rankings (Algorithm 8's 2:1, default); one "
                        "global ranking by importance per parameter removed; or grouped: single units, whole "
                        "MLPs and whole layers on one ranking by the damage each adds per parameter removed "
                        "(angular or cross_entropy, fine granularity)")
    p.add_argument("--compensate", default="none", choices=COMPENSATIONS,
                   help="reconstruction after pruning: lstsq refits the surviving writer before each removed run of "
                        "attention blocks / MLPs / layers by least squares on the calibration data and folds the "
                        "fit into its weights (no new parameters); auto: lstsq where the model has a pre-norm "
                        "residual stream; none (default)")
    p.add_argument("--block-choice", default="gromov", choices=BLOCK_CHOICES,
                   help="--granularity block with angular importance: Gromov et al.'s most similar contiguous "
                        "run of layers (default) or a plain ranking of single layers")
    calibration(p)
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("eval", help="evaluate a model through ONNX Runtime")
    p.add_argument("model")
    p.add_argument("--task", required=True, choices=tasks.task_names())
    p.add_argument("--text", help="perplexity: a text file (WikiText-2 format); embedding: lines to embed "
                                  "(the first --samples non-empty ones; default: built-in sentences)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: beside the model)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens")
    p.add_argument("--stride", type=int, default=None, help="sliding windows (default: non-overlapping)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--reference", help="detection: the unpruned model, whose detections are the ground truth; "
                                       "embedding: the unpruned model, whose embeddings are compared with")
    p.add_argument("--images", type=int, default=24, help="detection: images from the packaged photos")
    p.add_argument("--imgsz", type=int, default=320, help="detection: letterbox size")
    p.add_argument("--image-dir", help="detection: a folder of images to score against labels")
    p.add_argument("--labels", help="detection: YOLO txt folder (default: the image folder) or a COCO .json")
    p.add_argument("--samples", type=int, default=None,
                   help="ocr: rendered lines (rec, default 200) or pages (det, default 50); embedding: lines "
                        "(default 200)")
    p.add_argument("--seed", type=int, default=0, help="ocr: seed of the rendered text")
    p.add_argument("--ocr-kind", choices=OCR_KINDS, default=None,
                   help="ocr: recognizer or detector (default: from the output shape)")
    p.add_argument("--data", help="multiple-choice: an MMLU CSV file or a folder of them (no header)")
    p.add_argument("--dev", help="multiple-choice: few-shot examples folder (default: 'dev' beside the data folder)")
    p.add_argument("--shots", type=int, default=0, help="multiple-choice: few-shot examples per question")
    p.add_argument("--scoring", default="both", choices=SCORINGS,
                   help="multiple-choice: answer letters (MMLU), answer texts (cloze, length-normalised) or both")
    p.add_argument("--limit", type=int, default=None, help="multiple-choice: first N questions only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("bench", help="ONNX Runtime latency of models side by side (interleaved runs)")
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cuda: CUDA execution provider (onnxruntime-gpu) with IO binding")
    p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                   help="concrete shape for a dynamic graph input (repeatable)")
    p.add_argument("--data", help="a dataset .npz (arrays named like the inputs, or input_ids, or images) "
                                  "instead of random inputs")
    p.add_argument("--batch-size", type=int, default=1, help="--data: rows per batch (default 1)")
    p.add_argument("--batches", type=int, default=1, help="random inputs: batches per timed pass (default 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", help="also write an HTML table here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("sweep", help="prune at many ratios and granularities; evaluate, time and report every point")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="sweep directory: points.jsonl/csv, plots, report, models/ (rerun to resume)")
    p.add_argument("--ratios", default="0:0.48:0.06",
                   help="START:STOP:STEP (STOP included) or a comma list (default 0:0.48:0.06)")
    p.add_argument("--granularity", default="fine",
                   help="transformers: comma list of fine, sublayer, block (one method each); ignored for CNNs")
    p.add_argument("--search-space", default=None, metavar="SPACES",
                   help="CNNs: comma list of full, reduced (one method each; default full)")
    p.add_argument("--eval", required=True, metavar="TASKS",
                   help=f"comma list of tasks ({', '.join(tasks.task_names())}) or none (latency only)")
    p.add_argument("--importance", default="magnitude", help="importance metric (default: magnitude)")
    p.add_argument("--exclude", metavar="REGEX", help="exclude units whose id (node name) matches REGEX")
    p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                   help="concrete shape for a dynamic graph input (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled calibration")
    calibration(p)
    p.add_argument("--text", help="perplexity: a text file (WikiText-2 format)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: beside the unpruned model)")
    p.add_argument("--ctx", type=int, default=None, help="perplexity: window length in tokens (default 512)")
    p.add_argument("--stride", type=int, default=None, help="perplexity: sliding windows")
    p.add_argument("--max-tokens", type=int, default=None, help="perplexity: first N tokens only")
    p.add_argument("--data", help="multiple-choice and other data-driven tasks: data file or folder")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--images", type=int, default=None, help="detection: images from the packaged photos (24)")
    p.add_argument("--imgsz", type=int, default=None, help="detection: letterbox size (320)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other evaluator option, e.g. shots=5 (repeatable)")
    p.add_argument("--bench-runs", type=int, default=10, help="latency runs per point, interleaved (default 10)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for evaluation and latency")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="one self-contained HTML report (+ Markdown) of sweeps, bench JSON and "
                                      "pruned models")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="sweep directories, bench .json files (bench --json), pruned .onnx models or plan .json")
    p.add_argument("-o", "--output", default="report.html", help="HTML file; OUTPUT.md and the PNGs go beside it")
    p.add_argument("--title", default="onnxdepth report")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="main job: build SmolLM2 ONNX from the packaged weights, prune it, compare")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--granularity", default="fine", choices=GRANULARITIES)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("score", help="importance of every unit, as a CSV score table (lowest first)")
    p.add_argument("model")
    p.add_argument("--importance", default="magnitude", help="magnitude, angular, cross_entropy or taylor")
    p.add_argument("-o", "--output", help="write the CSV here (default: stdout)")
    p.add_argument("--seed", type=int, default=0)
    common(p)
    calibration(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("export", help="export a framework model to ONNX")
    p.add_argument("source", choices=["ultralytics", "hf"], help="exporter")
    p.add_argument("src", help="ultralytics: bundled yaml (yolov5s.yaml) or .pt; hf: model directory or .gguf")
    p.add_argument("out", help="ultralytics: output .onnx; hf: output directory (model.onnx + tokenizer/config)")
    p.add_argument("--imgsz", type=int, default=640, help="ultralytics: image size")
    p.add_argument("--task", default="text-generation",
                   choices=HF_TASKS,
                   help="hf: export task")
    p.add_argument("--overwrite", action="store_true", help="hf: replace an existing model.onnx in OUT")
    p.add_argument("--opset", type=int, default=None)
    p.set_defaults(func=_cmd_export)
    return parser


def _print_causes(exc: BaseException) -> None:
    """-v: the chain of exceptions behind a typed error (`raise ... from cause`), innermost last."""
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:  # a chain can loop back on itself
        seen.add(id(cause))
        print(f"  caused by {type(cause).__name__}: {cause}", file=sys.stderr)
        cause = cause.__cause__ or cause.__context__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except OnnxDepthError as exc:
        print(f"onnxdepth: error: {exc}", file=sys.stderr)
        if args.verbose:
            _print_causes(exc)
        return EXIT_UNREACHABLE if isinstance(exc, RatioUnreachableError) else EXIT_ERROR
    except KeyboardInterrupt:
        print("onnxdepth: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line (rerun with -v for the traceback), never a partial file
        if args.verbose:
            raise
        print(f"onnxdepth: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
