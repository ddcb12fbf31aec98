"""`--compensate none` vs `lstsq` on PP-OCRv4 (rapidocr's det / rec): det F1 and rec character accuracy.

    python tools/chain_ocr.py [--models det rec] [--ratio 0.1] [--importance taylor] [--samples 50]
        [--work-dir artifacts/chain]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth import api
from onnxdepth.config import PruneConfig
from onnxdepth.eval.ocr import evaluate_ocr
from onnxdepth.graph.io import load_model, save_model_atomic
from onnxdepth.models_zoo import ppocr_det, ppocr_rec

MODELS = {"det": (ppocr_det, (1, 3, 640, 640)), "rec": (ppocr_rec, (1, 3, 48, 320))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["det", "rec"], choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["none", "lstsq"])
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--importance", default="taylor")
    parser.add_argument("--samples", type=int, default=None, help="eval lines / pages (default 200 / 50)")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/chain"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        find, shape = MODELS[name]
        model = load_model(find())
        for mode in args.modes:
            t0 = time.perf_counter()
            config = PruneConfig(ratio=args.ratio, importance=args.importance, compensate=mode,
                                 input_shapes={model.graph.input[0].name: shape})
            result = api.prune_model(model, config)
            seconds = time.perf_counter() - t0
            out = args.work_dir / f"ppocr-{name}_{args.ratio:.2f}_{mode}.onnx"
            save_model_atomic(result.model, out)
            compensation = result.plan.get("compensation", {})
            fits = compensation.get("fits", [])
            score = evaluate_ocr(str(out), kind=name, samples=args.samples, threads=2)
            metric = score["f1"] if name == "det" else score["char_accuracy"]
            print(json.dumps({"model": name, "ratio": args.ratio, "mode": mode, "reduction": round(result.reduction, 4),
                              "score": round(metric, 4), "seconds": round(seconds, 1),
                              "fit_seconds": compensation.get("seconds", 0.0), "fits": len(fits),
                              "folded": sum(1 for f in fits if f.get("folded"))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
