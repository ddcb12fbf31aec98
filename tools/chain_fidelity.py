"""`--compensate none` vs `lstsq` on nudenet's YOLOv8n (Algorithm 9, Taylor): fidelity mAP50 against the
unpruned model and the time each prune takes.

    python tools/chain_fidelity.py [--ratios 0.2 0.3] [--modes none lstsq] [--images 24] [--taylor-images 12]
        [--work-dir artifacts/chain]

Evaluation images are table43's (seeded variants of the packaged photos, seed 1); Taylor and the refits
calibrate on seed 0 images. Each (ratio, mode) is its own prune (a compensated prune has no checkpoints).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth import api
from onnxdepth.compensate import chain
from onnxdepth.config import PruneConfig
from onnxdepth.eval import fidelity_map, reference_images
from onnxdepth.graph.io import load_model, save_model_atomic
from onnxdepth.importance import taylor_calibration
from onnxdepth.models_zoo import nudenet_yolov8n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3])
    parser.add_argument("--modes", nargs="+", default=["none", "lstsq"])
    parser.add_argument("--scope", choices=chain.SCOPES, default=chain.SCOPE, help="which Convs lstsq refits")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--taylor-images", type=int, default=12)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/chain"))
    args = parser.parse_args()
    taylor_calibration.TAYLOR_IMAGES = args.taylor_images
    chain.SCOPE = args.scope
    src = nudenet_yolov8n()
    model = load_model(src)
    shapes = {model.graph.input[0].name: (1, 3, 320, 320)}
    images = reference_images(args.images, 320, seed=1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for ratio in args.ratios:
        for mode in args.modes:
            t0 = time.perf_counter()
            config = PruneConfig(ratio=ratio, importance="taylor", input_shapes=shapes, compensate=mode)
            result = api.prune_model(model, config)
            seconds = time.perf_counter() - t0
            fit_seconds = result.plan.get("compensation", {}).get("seconds", 0.0)
            tag = mode if mode == "none" else f"{mode}-{args.scope}"
            out = args.work_dir / f"nudenet_{ratio:.2f}_{tag}.onnx"
            save_model_atomic(result.model, out)
            fits = result.plan.get("compensation", {}).get("fits", [])
            fid = fidelity_map(str(out), str(src), images, threads=2)
            row = {"ratio": ratio, "mode": tag, "reduction": round(result.reduction, 4),
                   "map50": round(fid["map50"], 4), "seconds": round(seconds, 1), "fit_seconds": fit_seconds,
                   "fits": len(fits), "folded": sum(1 for f in fits if f.get("folded"))}
            rows.append(row)
            (args.work_dir / f"nudenet_{ratio:.2f}_{tag}.plan.json").write_text(json.dumps(result.plan, indent=1))
            print(json.dumps(row), flush=True)
    print("| ratio | compensate | reduction | fidelity mAP50 | prune s | of it refits | fits (folded) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']:.2f} | {r['mode']} | {r['reduction']:.1%} | {r['map50']:.3f} | {r['seconds']:.0f} | {r['fit_seconds']:.0f} | "
              f"{r['fits']} ({r['folded']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
