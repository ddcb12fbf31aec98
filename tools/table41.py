"""Table 4.1 and Figures 4.1 / 4.2 analogue: SmolLM2-135M pruned from 0 to 48% in steps of 6% at fine,
sublayer and block granularity (angular importance, WikiText-2 valid calibration), with WikiText-2 test
perplexity, MMLU val accuracy (letter and cloze) and ONNX Runtime latency at every point.

    python tools/table41.py [--model DIR/model.onnx] [--out artifacts/sweep_smollm2]
        [--max-tokens 8192] [--mmlu-limit 100] [--bench-runs 3]

A thin wrapper around `onnxdepth sweep` (resumable: rerun the same command after an interruption);
prints the table and where the plots (metric vs parameter reduction with the random-guess line, the
thesis's Figures 4.1 / 4.2) and the HTML report went.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onnxdepth.cli import main as cli_main
from onnxdepth.sweep import read_points

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/out/smollm2-135m/model.onnx"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/sweep_smollm2"))
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--mmlu-limit", type=int, default=100)
    parser.add_argument("--bench-runs", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.model.exists():
        from onnxdepth.models_zoo import ensure_export

        args.model = ensure_export("smollm2-135m", "text-generation", args.model.parent)
    code = cli_main(["sweep", str(args.model), "-o", str(args.out), "--eval",
                     "perplexity,multiple-choice,multiple-choice-cloze", "--ratios", "0:0.48:0.06", "--granularity",
                     "fine,sublayer,block", "--importance", "angular", "--calib", str(DATA / "wikitext-2" / "valid.txt"),
                     "--text", str(DATA / "wikitext-2" / "test.txt"), "--max-tokens", str(args.max_tokens),
                     "--data", str(DATA / "mmlu" / "val"), "--limit", str(args.mmlu_limit),
                     "--bench-runs", str(args.bench_runs), "--threads", "2"])
    if code != 0:
        return code
    rows = [r for r in read_points(args.out / "points.jsonl") if r.get("status") == "ok"]
    print("\n| method | target | reduction | params | latency / unpruned | perplexity | MMLU letter | MMLU cloze |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["method"] != "unpruned", r["method"], r["ratio"])):
        m = r["metrics"]
        print(f"| {r['method']} | {r['ratio']:.2f} | {r['reduction']:.1%} | {r['params'] / 1e6:.1f}M | "
              f"{r.get('latency_vs_unpruned') or 1.0:.3f} | {m.get('perplexity', float('nan')):,.1f} | "
              f"{m.get('multiple-choice', float('nan')):.3f} | {m.get('multiple-choice-cloze', float('nan')):.3f} |")
    print(f"\nplots, points.csv and report.html in {args.out}/ ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
