"""The latency objective against the parameter objective at the same parameter reduction, measured.

    YOLO_OFFLINE=1 python tools/latency_objective.py --out-dir /tmp/latency [--models yolov8n yolov5s]
        [--latency-ratios 0.2 0.3] [--heads branches last] [--selections taylor measured] [--runs 30]

For each model, head rule and latency ratio R: `prune --objective latency --latency-ratio R`, then
`prune --ratio P` with P its parameter reduction (the parameter objective, the same head rule). Both use
`--importance taylor` (the CNN default) and the default compensation. Every pruned model and its parent are
then timed in one process, interleaved (`onnxdepth.bench.bench_models`, one thread, median of --runs runs),
and the table prints the parameter reduction, the profiled and the measured latency reduction, their ratio
and the plan's fidelity (mAP50 against the parent on held-out photos; meaningless on random weights).

yolov8n is nudenet's trained 320n.onnx; yolov5s is exported from ultralytics' yaml at 320 (random weights).
Pruned models are reused when their plan matches (`prune_file_cached`), so a rerun only re-times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxdepth.api import prune_file_cached  # noqa: E402
from onnxdepth.bench import bench_models  # noqa: E402
from onnxdepth.config import PruneConfig  # noqa: E402

SHAPE = {"images": (1, 3, 320, 320)}


def source_model(name: str, out_dir: Path) -> Path:
    """The parent model file in OUT_DIR (copied or exported once)."""
    path = out_dir / f"{name}.onnx"
    if path.is_file():
        return path
    if name == "yolov8n":
        from onnxdepth.models_zoo import nudenet_yolov8n

        shutil.copy(nudenet_yolov8n(), path)
    else:
        from onnxdepth.export.ultralytics import export_ultralytics

        export_ultralytics(f"{name}.yaml", path, imgsz=320)
    return path


#: --selection NAME -> the importance options of both prunes of a pair: Taylor scores (Algorithm 9), or
#: angular distance on the graph outputs re-measured after every step over the 12 best candidates.
SELECTIONS = {"taylor": {"importance": "taylor"},
              "measured": {"importance": "angular", "rescore_every": 1, "shortlist": 12}}


def prune_pair(src: Path, out_dir: Path, head: str, latency_ratio: float, selection: str = "taylor") -> list[dict]:
    """The latency-objective prune at LATENCY_RATIO and the parameter-objective prune at its reduction."""
    stem = f"{src.stem}_{head}" + ("" if selection == "taylor" else f"_{selection}")
    options = SELECTIONS[selection]
    latency = PruneConfig(0.0, objective="latency", latency_ratio=latency_ratio, input_shapes=SHAPE, head=head,
                          **options)
    path, plan, _ = prune_file_cached(src, out_dir / f"{stem}_lat{latency_ratio:g}.onnx", latency)
    rows = [_row(src, path, plan, head, f"latency --latency-ratio {latency_ratio:g}", selection)]
    matched = round(plan["reduction"], 4)
    params = PruneConfig(matched, input_shapes=SHAPE, head=head, **options)
    path, plan, _ = prune_file_cached(src, out_dir / f"{stem}_par{matched:g}.onnx", params)
    rows.append(_row(src, path, plan, head, f"params --ratio {matched:g}", selection))
    return rows


def _row(src: Path, path: Path, plan: dict, head: str, run: str, selection: str) -> dict:
    fidelity = plan.get("fidelity") or {}
    latency = plan.get("latency") or {}
    return {"model": src.stem, "head": head, "selection": selection, "run": run, "path": str(path),
            "units": len(plan["steps"]),
            "param_reduction": plan["reduction"], "profiled_latency_reduction": latency.get("reduction"),
            "fidelity_map50": fidelity.get("value")}


def time_rows(src: Path, rows: list[dict], runs: int) -> None:
    """Measured one-thread latency reduction of every row's model against SRC, all interleaved in one process."""
    bench = bench_models([str(src)] + [r["path"] for r in rows], runs=runs, warmup=5, threads=1,
                         input_shapes=SHAPE)
    base = bench[0].median_ms
    for row, timed in zip(rows, bench[1:]):
        row["parent_ms"], row["ms"] = base, timed.median_ms
        row["measured_latency_reduction"] = 1.0 - timed.median_ms / base


def render(rows: list[dict]) -> str:
    lines = ["| model | head | selection | run | units | params removed | latency removed (profiled) | latency removed "
             "(measured, 1 thread) | measured latency / params | fidelity mAP50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        profiled = f"{r['profiled_latency_reduction']:.1%}" if r["profiled_latency_reduction"] is not None else "-"
        fidelity = f"{r['fidelity_map50']:.3f}" if r["fidelity_map50"] is not None else "-"
        lines.append(f"| {r['model']} | {r['head']} | {r.get('selection', 'taylor')} | `{r['run']}` | {r['units']} | {r['param_reduction']:.1%} | "
                     f"{profiled} | {r['measured_latency_reduction']:.1%} ({r['parent_ms']:.2f} -> {r['ms']:.2f} ms) | "
                     f"{r['measured_latency_reduction'] / max(r['param_reduction'], 1e-9):.2f} | {fidelity} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["yolov8n", "yolov5s"])
    parser.add_argument("--latency-ratios", nargs="+", type=float, default=[0.2, 0.3])
    parser.add_argument("--heads", nargs="+", default=["branches", "last"])
    parser.add_argument("--selections", nargs="+", choices=SELECTIONS, default=["taylor"],
                        help="taylor: Taylor scores; measured: angular on the graph outputs, re-measured each step")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model (median)")
    parser.add_argument("--skip-timing", action="store_true",
                        help="prune only (run prunes in parallel, then time them all in a quiet rerun)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = []
    for name in args.models:
        src = source_model(name, args.out_dir)
        rows = [row for selection in args.selections for head in args.heads for ratio in args.latency_ratios
                for row in prune_pair(src, args.out_dir, head, ratio, selection)]
        if args.skip_timing:
            print(json.dumps(rows, indent=2))
            continue
        time_rows(src, rows, args.runs)
        table.extend(rows)
    if args.skip_timing:
        return 0
    (args.out_dir / "latency_objective.json").write_text(json.dumps(table, indent=2) + "\n")
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
