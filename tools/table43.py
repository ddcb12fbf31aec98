"""Table 4.3 / Figure 4.6 analogue on CPU: YOLO models pruned step by step (Algorithm 9), with parameters,
total and per-batch ONNX Runtime latency, and fidelity mAP50 against the unpruned model's detections.

    python tools/table43.py [--models nudenet yolov5s] [--ratios 0.05 0.1 ... 0.5] [--importance taylor]
        [--images 24] [--taylor-images 12] [--imgsz 640] [--runs 5] [--work-dir artifacts/table43]

Algorithm 9 prunes one unit at a time, so every smaller ratio is a prefix of the run to the largest:
one run per model hands over (and verifies) the model at every ratio (prune_model's checkpoints).
Evaluation images are seeded variants of the photos installed packages ship (seed 1), other than the
Taylor calibration images (seed 0). Latency: all points of a model interleaved with the unpruned one
(bench_models), batch 1 over the evaluation images: "total" is one pass over all of them.
The row marked * is the last reduction that keeps at least 80% of the unpruned fidelity mAP50 (1.0).
nudenet's YOLOv8n is a trained detector; YOLOv5s is built from ultralytics' yaml with random weights,
so its "fidelity" only says how much the pruned network still agrees with its unpruned self.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnxdepth import api
from onnxdepth.config import PruneConfig
from onnxdepth.importance import taylor_calibration
from onnxdepth.bench import bench_models
from onnxdepth.errors import RatioUnreachableError
from onnxdepth.eval import fidelity_map, reference_images
from onnxdepth.graph.io import load_model, save_model_atomic
from onnxdepth.models_zoo import nudenet_yolov8n


def _source(name: str, imgsz: int) -> tuple[Path, int]:
    if name == "nudenet":
        return nudenet_yolov8n(), 320
    path = Path("models/out") / f"{name}-{imgsz}.onnx"
    if not path.exists():
        from onnxdepth.export.ultralytics import export_ultralytics

        path = export_ultralytics(f"{name}.yaml", path, imgsz=imgsz)
    model = load_model(path)
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value or 640
    return path, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["nudenet", "yolov5s"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[round(0.05 * k, 2) for k in range(1, 11)])
    parser.add_argument("--importance", default="taylor")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--imgsz", type=int, default=640, help="input size of the YOLOv5 exports (nudenet: 320)")
    parser.add_argument("--taylor-images", type=int, default=12)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency runs "
                                                              "(1 is least sensitive to a busy machine)")
    parser.add_argument("--force", action="store_true", help="redo models that already have a table.json")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/table43"))
    args = parser.parse_args()
    taylor_calibration.TAYLOR_IMAGES = args.taylor_images
    started = time.perf_counter()
    tables: dict[str, list[dict]] = {}
    for name in args.models:
        t0 = time.perf_counter()
        work = args.work_dir / name
        work.mkdir(parents=True, exist_ok=True)
        if (work / "table.json").exists() and not args.force:
            tables[name] = json.loads((work / "table.json").read_text())
            print(f"{name}: reusing {work / 'table.json'} (--force to redo)")
            continue
        src, size = _source(name, args.imgsz)
        model = load_model(src)
        shapes = {model.graph.input[0].name: (1, 3, size, size)}
        saved: dict[float, tuple[Path, float, int]] = {}

        def keep(ratio: float, result) -> None:
            out = work / f"{name}_{ratio:.2f}.onnx"
            save_model_atomic(result.model, out)
            saved[ratio] = (out, result.reduction, result.params_after)
            print(f"  {name}: {ratio:.2f} -> {result.reduction:.1%} ({len(result.pruned_units)} units, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)

        ratios = sorted(args.ratios)
        try:
            config = PruneConfig(ratio=ratios[-1], importance=args.importance, input_shapes=shapes)
            last = api.prune_model(model, config, checkpoints=ratios[:-1], on_checkpoint=keep)
            keep(ratios[-1], last)
        except RatioUnreachableError as exc:
            print(f"  {name}: {exc}")
        images = reference_images(args.images, size, seed=1)
        data = work / "images.npz"
        np.savez(data, images=np.stack(images))
        points = sorted(saved)
        rows = bench_models([str(src)] + [str(saved[r][0]) for r in points], runs=args.runs, warmup=1,
                            data=str(data), threads=args.threads)
        table = [{"ratio": 0.0, "reduction": 0.0, "params": rows[0].params, "total_ms": rows[0].total_ms,
                  "batch_ms": rows[0].median_ms, "map50": 1.0}]
        for ratio, row in zip(points, rows[1:]):
            fid = fidelity_map(saved[ratio][0], src, images, threads=2)
            table.append({"ratio": ratio, "reduction": saved[ratio][1], "params": row.params,
                          "total_ms": row.total_ms, "batch_ms": row.median_ms, "map50": fid["map50"]})
        keep_80 = [r for r in table if r["map50"] >= 0.8]
        best = max(keep_80, key=lambda r: r["reduction"]) if keep_80 else table[0]
        (work / "table.json").write_text(json.dumps(table, indent=1))
        tables[name] = table
        print(f"\n{name} ({args.importance}, batch 1, {args.images} images, median of {args.runs} passes):")
        print("| target | reduction | params | total ms | ms / batch | fidelity mAP50 |\n|---|---|---|---|---|---|")
        for r in table:
            mark = " *" if r is best else ""
            print(f"| {r['ratio']:.2f} | {r['reduction']:.1%}{mark} | {r['params']:,} | {r['total_ms']:.0f} | "
                  f"{r['batch_ms']:.1f} | {r['map50']:.3f} |")
        print(f"{name}: last reduction keeping >= 80% mAP50: {best['reduction']:.1%} (latency "
              f"{best['total_ms'] / table[0]['total_ms']:.3f} of unpruned); {time.perf_counter() - t0:.0f} s\n",
              flush=True)
    figure = _plot(tables, args.work_dir / "figure46.png")
    print(f"results under {args.work_dir}/, Figure 4.6 analogue in {figure} ({time.perf_counter() - started:.0f} s)")
    return 0


def _plot(tables: dict[str, list[dict]], out: Path) -> Path:
    """Fidelity mAP50 and relative latency against parameter reduction, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, table in tables.items():
        xs = [100 * r["reduction"] for r in table]
        left.plot(xs, [r["map50"] for r in table], marker="o", label=name)
        right.plot(xs, [r["total_ms"] / table[0]["total_ms"] for r in table], marker="o", label=name)
    left.axhline(0.8, color="gray", linestyle="--", linewidth=0.8, label="80% of unpruned")
    left.axhline(0.0, color="black", linestyle=":", linewidth=0.8, label="random guess")
    left.set(xlabel="parameter reduction (%)", ylabel="fidelity mAP50", title="accuracy")
    # A latency that falls exactly with the parameters would follow 1 - reduction.
    right.plot([0, 50], [1.0, 0.5], color="gray", linestyle="--", linewidth=0.8, label="proportional")
    right.set(xlabel="parameter reduction (%)", ylabel="latency / unpruned", title="CPU latency (batch 1)")
    left.legend()
    right.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    sys.exit(main())
