"""Benchmark: wall time of pruning YOLOv5s to a ratio with magnitude importance (target: under 30 s).

    python tools/bench_prune_yolov5s.py [--model yolov5s.onnx] [--ratio 0.3] [--repeats 3]

Without --model it exports yolov5s.yaml (random weights) with ultralytics into a temporary directory.
Prints each run's time and the median; the graph is edited in place per step (no re-export per candidate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from onnxdepth.api import prune_model
from onnxdepth.config import PruneConfig
from onnxdepth.graph.io import load_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from onnxdepth.export.ultralytics import export_ultralytics

            path = export_ultralytics("yolov5s.yaml", Path(tmp) / "yolov5s.onnx")
        model = load_model(path)
        times = []
        for run in range(args.repeats):
            started = time.perf_counter()
            result = prune_model(model, PruneConfig(ratio=args.ratio))
            times.append(time.perf_counter() - started)
            print(f"run {run + 1}: {times[-1]:.2f} s, {result.params_before:,} -> {result.params_after:,} "
                  f"({result.reduction:.2%}, {len(result.pruned_units)} units, verification included)")
        print(f"median {statistics.median(times):.2f} s over {len(times)} runs (target < 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
