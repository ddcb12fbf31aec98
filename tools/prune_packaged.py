"""Prune the real ONNX models shipped in packages (YOLOv8n in nudenet, PP-OCRv4 det/rec in rapidocr)
at several ratios; print parameters, reduction, file size, ONNX Runtime output check and time.

    python tools/prune_packaged.py [--ratios 0.1 0.2 0.3] [--out-dir artifacts/packaged]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onnxdepth.api import prune_file
from onnxdepth.config import PruneConfig
from onnxdepth.errors import OnnxDepthError
from onnxdepth.models_zoo import PACKAGED

# Concrete shapes for the dynamic inputs (PP-OCR rec needs its 48-pixel line height).
INPUT_SHAPES = {
    "nudenet-yolov8n": {"images": (1, 3, 320, 320)},
    "ppocr-det": {"x": (1, 3, 640, 640)},
    "ppocr-rec": {"x": (1, 3, 48, 320)},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--out-dir", type=Path, default=Path("artifacts/packaged"))
    parser.add_argument("--models", nargs="+", default=list(PACKAGED))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    print(f"{'model':<18}{'ratio':>6}{'params before':>15}{'params after':>14}{'reduction':>10}"
          f"{'MB before':>10}{'MB after':>9}{'units':>6}{'sec':>6}")
    for name in args.models:
        src = PACKAGED[name]()
        for ratio in args.ratios:
            out = args.out_dir / f"{name}-{ratio:g}.onnx"
            started = time.perf_counter()
            try:
                result = prune_file(src, out, PruneConfig(ratio=ratio, input_shapes=INPUT_SHAPES.get(name)))
            except OnnxDepthError as exc:
                print(f"{name:<18}{ratio:>6g}  FAILED: {exc}")
                failures += 1
                continue
            print(f"{name:<18}{ratio:>6g}{result.params_before:>15,}{result.params_after:>14,}"
                  f"{result.reduction:>10.2%}{src.stat().st_size / 1e6:>10.2f}{out.stat().st_size / 1e6:>9.2f}"
                  f"{len(result.pruned_units):>6}{time.perf_counter() - started:>6.1f}")
            if result.reduction < ratio:
                failures += 1
    print(f"outputs in {args.out_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
