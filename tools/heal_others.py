"""Heal the packaged all-MiniLM-L6-v2 and nudenet YOLOv8n pruned at --ratio (default 0.3, the prune defaults)
and measure them before and after, on data healing never saw.

    python tools/heal_others.py minilm [--minutes 10]   # cosine to the unpruned embeddings, 200 WikiText-2 test lines
    python tools/heal_others.py yolo [--minutes 10]     # fidelity mAP50 on 24 photo variants of an unused seed

MiniLM heals on WikiText-2 valid sentences; YOLOv8n on seeded crops / flips / rescales of the packaged photos
(seed 0). The YOLO check images are variants drawn with seed 777, the three unaltered photos left out (they
are in every draw, the training one too).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
_HEADING = re.compile(r"^=+ .* =+$")


def test_lines(count: int = 200) -> list[str]:
    lines = [line.strip() for line in (WIKITEXT / "test.txt").read_text().splitlines()]
    return [line for line in lines if len(line) > 20 and not _HEADING.match(line)][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("minilm", "yolo"))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lora-rank", type=int, default=0)
    args = parser.parse_args()

    from onnxdepth.api import prune_file_cached
    from onnxdepth.config import Calibration, PruneConfig
    from onnxdepth.heal import HealConfig, heal_file

    work = ROOT / "artifacts" / "heal_others"
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "minilm":
        from onnxdepth.eval.embedding import embedding_similarity
        from onnxdepth.models_zoo import ensure_export

        teacher = ensure_export("all-minilm-l6-v2", "feature-extraction", ROOT / "models" / "out" / "all-minilm-l6-v2")
        calib = str(WIKITEXT / "valid.txt")
        config = PruneConfig(args.ratio, calibration=Calibration(calib))
        heal = HealConfig(steps=100000, max_minutes=args.minutes, calib=calib, lr=args.lr, batch=args.batch or 16,
                          lora_rank=args.lora_rank, eval_every=10, held_out=32)
        lines = test_lines()

        def measure(path):
            return f"cosine {embedding_similarity(str(path), str(teacher), lines=lines)['cosine']:.4f}"
    else:
        import numpy as np

        from onnxdepth.eval.detection import fidelity_map, reference_images
        from onnxdepth.models_zoo import nudenet_yolov8n

        teacher = nudenet_yolov8n()
        config = PruneConfig(args.ratio, input_shapes={"images": (1, 3, 320, 320)})
        heal = HealConfig(steps=100000, max_minutes=args.minutes, lr=args.lr, batch=args.batch or 8,
                          lora_rank=args.lora_rank, eval_every=10, held_out=16)
        images = reference_images(27, 320, seed=777)[3:]  # the first three are the unaltered photos

        def measure(path):
            result = fidelity_map(str(path), str(teacher), [np.asarray(i) for i in images], threads=2)
            return f"fidelity mAP50 {result['map50']:.4f} (mAP50-95 {result['map50_95']:.4f})"

    pruned, plan, _ = prune_file_cached(teacher, work / f"{args.model}-{args.ratio:g}.onnx", config)
    out = work / f"{args.model}-{args.ratio:g}-healed{'-lora' + str(args.lora_rank) if args.lora_rank else ''}.onnx"
    before = measure(pruned)
    started = time.perf_counter()
    record = heal_file(pruned, out, teacher, heal, progress=False)["healing"]
    seconds = time.perf_counter() - started
    after = measure(out)
    print(f"{args.model} at {args.ratio:g}: {plan['reduction']:.2%} removed ({', '.join(plan.get('pruned_units', [])[:6])}"
          f"{'...' if len(plan.get('pruned_units', [])) > 6 else ''})")
    print(f"  healing: {record['mode']}, {record['data']}, {record['steps_done']} steps in {seconds:.0f} s, "
          f"best step {record['best_step']}, held-out {record['metric']} {record['held_out_curve'][0][3]:.4f} -> "
          f"{next(c[3] for c in record['held_out_curve'] if c[0] == record['best_step']):.4f}")
    print(f"  before healing: {before}\n  after healing:  {after}")


if __name__ == "__main__":
    main()
