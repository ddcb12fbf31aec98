#!/usr/bin/env python3
"""Recipe: export YOLO variants (random weights, built offline from ultralytics' bundled yamls) to ONNX.

    python models/build_yolo.py                                  # yolov5s/m/l/x -> models/out/
    python models/build_yolo.py --variants yolov8n --imgsz 320

Needs the ultralytics extra: pip install -e '.[ultralytics]'.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import onnx

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from onnxdepth.errors import OnnxDepthError  # noqa: E402
from onnxdepth.export.ultralytics import export_ultralytics  # noqa: E402

DEFAULT_VARIANTS = ["yolov5s", "yolov5m", "yolov5l", "yolov5x"]


def param_count(path: pathlib.Path) -> int:
    """Sum of initializer element counts."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("models/out"))
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                    help="ultralytics model names (yaml suffix optional) or .pt paths")
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        src = variant if variant.endswith((".yaml", ".yml", ".pt")) else f"{variant}.yaml"
        out = args.out_dir / f"{pathlib.Path(src).stem}.onnx"
        t0 = time.perf_counter()
        try:
            export_ultralytics(src, out, imgsz=args.imgsz)
        except OnnxDepthError as exc:
            print(f"error: {variant}: {exc}", file=sys.stderr)
            return 1
        dt = time.perf_counter() - t0
        print(f"{out}  params={param_count(out):,}  {dt:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
