"""Reproduce the thesis's Table 4.4 (prunable search space of YOLOv5 M/L/X) with `onnxdepth units`.

    python tools/table44.py [--onnx-dir DIR]

Exports yolov5{m,l,x}.yaml with ultralytics (random weights: structure only) unless DIR already holds
yolov5{m,l,x}.onnx. The Detect head is excluded by the structural head rule (no --exclude needed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from onnxdepth.api import list_units, units_summary
from onnxdepth.graph.io import load_model

THESIS = {"yolov5m": (79, 7, 72, 52), "yolov5l": (101, 7, 94, 74), "yolov5x": (123, 7, 116, 98)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx-dir", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, thesis in THESIS.items():
            path = args.onnx_dir / f"{name}.onnx" if args.onnx_dir else None
            if path is None or not path.exists():
                from onnxdepth.export.ultralytics import export_ultralytics

                path = export_ultralytics(f"{name}.yaml", Path(tmp) / f"{name}.onnx")
            summary = units_summary(list_units(load_model(path)))
            ours = (summary["candidates"], summary["excluded"].get("changes spatial dims", 0),
                    summary["prunable"], summary["prunable_reduced"])
            rows.append((name, ours, thesis, summary["head"]))
    print(f"{'model':<9}{'candidates':>11}{'spatial':>9}{'prunable':>10}{'reduced':>9}{'extension':>10}"
          f"{'head':>6}   thesis (cand/spatial/prunable/reduced)")
    for name, ours, thesis, head in rows:
        extension = ours[2] / ours[3] - 1
        print(f"{name:<9}{ours[0]:>11}{ours[1]:>9}{ours[2]:>10}{ours[3]:>9}{extension:>10.0%}{head:>6}   {thesis}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
