"""SmolLM2-135M: what least-squares compensation (`--compensate lstsq`) buys, mode by mode and ratio by ratio.

    python tools/compensation_table.py [--model DIR/model.onnx] [--ratios 0.1 0.2 0.3]
        [--modes fine-angular block-gromov default] [--compensate none lstsq] [--max-tokens 32768]

Each point prunes with calibration on WikiText-2 *valid* (32 x 128 tokens, spread windows), then measures
WikiText-2 *test* perplexity on the first --max-tokens tokens in 512-token windows. Modes:

- `fine-angular`: Algorithm 8, one-shot block-local angular importance (`--granularity fine`);
- `block-gromov`: whole layers, Gromov et al.'s contiguous run (`--granularity block --importance angular`);
  with lstsq the run is chosen by the damage left after its fit;
- `sublayer-angular`: attention blocks and MLPs ranked by angular importance;
- `default`: the command a user types with only `--calib` given.

Every point (plan JSON + perplexity) is cached under --work-dir, so an interrupted run resumes; the
pruned model file is deleted after its evaluation. The table prints as a Markdown grid at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth.api import prune_file
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.eval import evaluate_perplexity
from onnxdepth.models_zoo import ensure_export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"

#: Mode name -> the PruneConfig options it sets (the rest are the defaults).
MODES = {
    "fine-angular": {"granularity": "fine", "importance": "angular"},
    "sublayer-angular": {"granularity": "sublayer", "importance": "angular"},
    "block-gromov": {"granularity": "block", "importance": "angular"},
    "default": {},
}


def _config(mode: str, ratio: float, compensate: str, calibration: Calibration) -> PruneConfig:
    options = dict(MODES[mode])
    if mode != "default":
        options["compensate"] = compensate
    return PruneConfig(ratio=ratio, calibration=calibration, **options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--modes", nargs="+", default=["fine-angular", "block-gromov", "default"], choices=MODES)
    parser.add_argument("--compensate", nargs="+", default=["none", "lstsq"], choices=["none", "lstsq"])
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/compensation_table"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    model_path = args.model or ensure_export("smollm2-135m", "text-generation", Path("models/out/smollm2-135m"))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["mode"], row["ratio"], row["compensate"], row["max_tokens"])] = row
    calibration = Calibration(str(DATA / "valid.txt"), model_path=str(model_path))

    def measure(path: Path) -> float:
        return evaluate_perplexity(str(path), str(DATA / "test.txt"), tokenizer_dir=str(model_path.parent),
                                   max_tokens=args.max_tokens, ctx=512, threads=args.threads,
                                   progress=False)["perplexity"]

    unpruned_key = ("unpruned", 0.0, "none", args.max_tokens)
    if unpruned_key not in done:
        done[unpruned_key] = {"perplexity": measure(model_path)}
        with results_path.open("a") as handle:
            handle.write(json.dumps({"mode": "unpruned", "ratio": 0.0, "compensate": "none",
                                     "max_tokens": args.max_tokens, **done[unpruned_key]}) + "\n")
    print(f"unpruned perplexity {done[unpruned_key]['perplexity']:.2f}", flush=True)
    for mode in args.modes:
        for ratio in args.ratios:
            for compensate in (["default"] if mode == "default" else args.compensate):
                key = (mode, ratio, compensate, args.max_tokens)
                if key in done:
                    continue
                out = args.work_dir / f"smollm2-{mode}-{ratio:g}-{compensate}.onnx"
                t0 = time.perf_counter()
                result = prune_file(model_path, out, _config(mode, ratio, compensate, calibration))
                prune_s = time.perf_counter() - t0
                row = {"mode": mode, "ratio": ratio, "compensate": compensate, "max_tokens": args.max_tokens,
                       "reduction": result.reduction, "perplexity": measure(out), "prune_s": round(prune_s, 1),
                       "units": result.pruned_units, "compensation": result.plan.get("compensation", {})}
                with results_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                done[key] = row
                print(f"{mode:<17}{ratio:>5}  {compensate:<8}{row['reduction']:>8.2%}{row['perplexity']:>11.2f}"
                      f"{prune_s:>8.0f} s", flush=True)
                out.unlink()  # the plan JSON beside it records what was pruned and fitted
    _print_table(done, args)
    print(f"results in {results_path}; {time.perf_counter() - started:.0f} s")
    return 0


def _print_table(done: dict, args) -> None:
    """Markdown: one row per mode and compensation, one column per ratio (perplexity, reduction)."""
    print("\n| mode | compensate | " + " | ".join(f"{r:g}" for r in args.ratios) + " |")
    print("|---|---|" + "---|" * len(args.ratios))
    for mode in args.modes:
        for compensate in (["default"] if mode == "default" else args.compensate):
            cells = []
            for ratio in args.ratios:
                row = done.get((mode, ratio, compensate, args.max_tokens))
                cells.append(f"{row['perplexity']:.2f} ({row['reduction']:.1%})" if row else "-")
            print(f"| {mode} | {compensate} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
