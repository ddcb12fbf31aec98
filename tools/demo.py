"""The main job on an embedded default, until the SmolLM2 pipeline lands: prune the real YOLOv8n that
ships in `nudenet` and compare parameters, file size, ONNX Runtime CPU latency and output fidelity.

    python tools/demo.py [--ratio 0.2] [--runs 20]

Latency: both models in one process, interleaved (A B A B ...), median of --runs after warm-up.
Fidelity: relative L2 error and cosine similarity of the raw detection tensor on ultralytics' bus.jpg.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxdepth.api import prune_file
from onnxdepth.config import PruneConfig
from onnxdepth.models_zoo import nudenet_yolov8n

SIZE = 320


def load_image() -> np.ndarray:
    """ultralytics' bus.jpg letterboxed to SIZE x SIZE, NCHW float in [0, 1]; noise if unavailable."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "assets" / "bus.jpg"
        if path.exists():
            from PIL import Image

            image = Image.open(path).convert("RGB")
            scale = SIZE / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            canvas = Image.new("RGB", (SIZE, SIZE), (114, 114, 114))
            canvas.paste(image, ((SIZE - image.width) // 2, (SIZE - image.height) // 2))
            return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    return np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    src = nudenet_yolov8n()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "yolov8n-pruned.onnx"
        started = time.perf_counter()
        result = prune_file(src, out, PruneConfig(ratio=args.ratio, input_shapes={"images": (1, 3, SIZE, SIZE)}))
        prune_seconds = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("original", src), ("pruned", out))}
        feeds = {"images": load_image()}
        outputs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}
        times = {name: [] for name in sessions}
        for _ in range(3):  # warm-up
            for s in sessions.values():
                s.run(None, feeds)
        for _ in range(args.runs):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - t0)
        sizes = {"original": src.stat().st_size, "pruned": out.stat().st_size}
    a, b = outputs["original"].ravel(), outputs["pruned"].ravel()
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"nudenet YOLOv8n ({src.name}) pruned to ratio {args.ratio:g} in {prune_seconds:.1f} s, "
          f"{len(result.pruned_units)} units")
    print(f"{'':<10}{'params':>12}{'MB':>8}{'median ms':>11}")
    print(f"{'original':<10}{result.params_before:>12,}{sizes['original'] / 1e6:>8.2f}{med['original']:>11.2f}")
    print(f"{'pruned':<10}{result.params_after:>12,}{sizes['pruned'] / 1e6:>8.2f}{med['pruned']:>11.2f}")
    print(f"parameter reduction {result.reduction:.1%}, latency reduction {1 - med['pruned'] / med['original']:.1%}"
          f" ({args.runs} interleaved runs, {args.threads} threads)")
    print(f"output fidelity on bus.jpg: cosine {cos:.4f}, relative L2 error {rel:.3f} (no fine-tuning)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
