"""Table 4.5 analogue: nudenet's trained YOLOv8n pruned to about 11% with Algorithm 9 picking the lowest
(ascending, the method), highest (descending) or a random unit, scored by fidelity mAP against the
unpruned model's own detections on the photos shipped by installed packages (and seeded variants).

    python tools/yolo_ordering_ablation.py [--ratio 0.11] [--importance magnitude] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from onnxdepth.api import prune_file
from onnxdepth.config import PruneConfig
from onnxdepth.eval import fidelity_map, reference_images
from onnxdepth.models_zoo import nudenet_yolov8n

SHAPES = {"images": (1, 3, 320, 320)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.11)
    parser.add_argument("--importance", default="magnitude")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random ordering")
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    started = time.perf_counter()
    src = nudenet_yolov8n()
    # Evaluation images are other seeded variants than the Taylor calibration images (seed 0).
    images = reference_images(args.images, 320, seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("ascending", 0), ("descending", 0)] + [("random", seed) for seed in args.seeds]
        for ordering, seed in runs:
            out = Path(tmp) / f"{ordering}-{seed}.onnx"
            config = PruneConfig(ratio=args.ratio, importance=args.importance, ordering=ordering, seed=seed,
                                 input_shapes=SHAPES)
            result = prune_file(src, out, config)
            metrics = fidelity_map(out, src, images, threads=1)
            rows.append((ordering, seed, result.reduction, metrics["map50"], metrics["map50_95"],
                         len(result.pruned_units)))
    print(f"YOLOv8n (nudenet) at ratio {args.ratio:g}, {args.importance} importance, fidelity mAP on "
          f"{args.images} images")
    print(f"{'ordering':<12}{'seed':>5}{'reduction':>11}{'mAP50':>8}{'mAP50-95':>10}{'units':>7}")
    for ordering, seed, reduction, m50, m5095, units in rows:
        print(f"{ordering:<12}{seed:>5}{reduction:>11.2%}{m50:>8.3f}{m5095:>10.3f}{units:>7}")
    random_rows = [r for r in rows if r[0] == "random"]
    if random_rows:
        print(f"random mean  mAP50 {statistics.mean(r[3] for r in random_rows):.3f}, "
              f"mAP50-95 {statistics.mean(r[4] for r in random_rows):.3f}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
