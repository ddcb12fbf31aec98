"""Heal SmolLM2 pruned at 0.3 and measure WikiText-2 test perplexity (first 32k tokens) before healing, after
--snapshot minutes and at the end (--minutes), the snapshot taken at the first held-out check past its time.

    .venv/bin/onnxdepth prune models/out/smollm2-135m-with-past/model.onnx artifacts/heal/p30.onnx --ratio 0.3 \\
        --calib ../shared/data/wikitext-2/valid.txt
    python tools/heal_smollm2.py [--lora-rank 16] [--calib none] [--sampled N] [--minutes 30] [--snapshot 15]

Each run writes artifacts/heal/<tag>.onnx (healed, verified) and <tag>-<snapshot>min.onnx, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "models" / "out" / "smollm2-135m-with-past" / "model.onnx"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"


def test_perplexity(path: Path) -> float:
    from onnxdepth.eval.perplexity import evaluate_perplexity

    return evaluate_perplexity(path, WIKITEXT / "test.txt", TEACHER.parent, max_tokens=32768,
                               progress=False)["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", type=Path, default=ROOT / "artifacts" / "heal" / "p30.onnx")
    parser.add_argument("--calib", default=str(WIKITEXT / "valid.txt"), help="'none': text sampled from the teacher")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--snapshot", type=float, default=15.0)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--label-weight", type=float, default=0.0)
    parser.add_argument("--sampled", type=int, default=0,
                        help="windows sampled from the teacher (chats): with --calib none the count, else mixed in")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from onnxdepth.api import plan_path_for
    from onnxdepth.fileio import write_json_atomic
    from onnxdepth.graph.io import load_model, save_model_atomic
    from onnxdepth.heal import HealConfig, heal_model, with_initializers
    from onnxdepth.verify import written_file_check

    calib = None if args.calib == "none" else args.calib
    data = ("wiki" + (f"+self{args.sampled}" if args.sampled else "")) if calib else "self"
    tag = args.tag or f"{'lora' + str(args.lora_rank) if args.lora_rank else 'full'}-{data}"
    out = args.pruned.with_name(f"{tag}.onnx")
    snapshot = args.pruned.with_name(f"{tag}-{args.snapshot:g}min.onnx")
    pruned = load_model(args.pruned)
    config = HealConfig(steps=100000, max_minutes=args.minutes, lora_rank=args.lora_rank, lr=args.lr, calib=calib,
                        eval_every=args.eval_every, label_weight=args.label_weight, seq_len=args.seq_len,
                        batch=args.batch, sampled=args.sampled)
    taken = {}

    def on_check(run, student):
        if not taken and run.held_out_curve[-1][1] >= args.snapshot * 60:
            model = with_initializers(pruned, student.updated_initializers())
            save_model_atomic(model, snapshot, check=written_file_check(args.pruned, {}))
            taken.update(step=run.steps_done, seconds=run.held_out_curve[-1][1])

    started = time.perf_counter()  # includes sampling the teacher's text (data-free runs); the record's own
    # seconds are training only
    healed, record = heal_model(pruned, str(TEACHER), config, on_check=on_check, progress=False)
    seconds = time.perf_counter() - started
    save_model_atomic(healed, out, check=written_file_check(args.pruned, {}))
    write_json_atomic(plan_path_for(out), {"healing": record})
    rows = [("before healing", 0, 0.0, test_perplexity(args.pruned))]
    if taken:
        rows.append((f"after {taken['seconds'] / 60:.1f} min (current weights)", taken["step"], taken["seconds"],
                     test_perplexity(snapshot)))
    rows.append((f"after {record['seconds'] / 60:.1f} min (best: step {record['best_step']})", record["steps_done"],
                 record["seconds"], test_perplexity(out)))
    print(f"\n{tag}: {record['mode']}, {record['data']}, {record['trainable_values']:,} trained values, "
          f"lr {record['options']['lr']:g}, {seconds:.0f} s in all")
    print("| point | steps | seconds | WikiText-2 test ppl (32k tokens) |\n| --- | --- | --- | --- |")
    for name, steps, secs, ppl in rows:
        print(f"| {name} | {steps} | {secs:.0f} | {ppl:.2f} |")
    print("held-out curve [step, s, KL, ppl]:", json.dumps(record["held_out_curve"]))


if __name__ == "__main__":
    main()
