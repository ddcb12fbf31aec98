"""Table 4.6 analogue: SmolLM2-135M, fine granularity (Algorithm 8), ~12% fewer parameters, by importance.

    python tools/table46.py [--model DIR/model.onnx] [--ratio 0.12] [--calib-sequences 128]
        [--metrics angular cross_entropy taylor magnitude random] [--ce-sequences N] [--windows spread|head]
        [--max-tokens 32768]

Every metric is calibrated on WikiText-2 *valid* (windows of 128 tokens spread evenly over the split;
``--windows head``: the leading ones, back to back, as measured before the spread layout) and reported as
WikiText-2 *test* perplexity (first --max-tokens tokens, 512-token windows) through ONNX Runtime.
"random" is Algorithm 8 with a random order (seed 0), the thesis's random baseline. Score tables and
results are cached under --work-dir, so an interrupted run resumes; --ce-sequences lets cross-entropy use
fewer sequences than the others (it re-runs every layer after the unit's own, so it costs the most).
Results rows carry their window layout; a run resumes only rows of its own layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth.api import prune_file, score_units
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.scores import ScoreTable
from onnxdepth.calibration import WINDOW_LAYOUTS, saved_calibration_tokens
from onnxdepth.importance.taylor_calibration import attach_lm_taylor
from onnxdepth.eval import evaluate_perplexity
from onnxdepth.graph.io import load_model
from onnxdepth.prune.session import PruneSession

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


def _scores(metric: str, model_path: Path, calib: str, n_seq: int, seq_len: int) -> dict[str, float]:
    model = load_model(model_path)
    session = PruneSession(model, granularity="fine")
    calibration = Calibration(calib, n_seq, seq_len, model_path=str(model_path))
    if metric == "taylor":
        attach_lm_taylor(model, session, calibration)
        return {p.unit_id: p.score for p in session.prunable_plans()}
    return score_units(model, session, metric, calibration).units


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/out/smollm2-135m/model.onnx"))
    parser.add_argument("--ratio", type=float, default=0.12)
    parser.add_argument("--metrics", nargs="+", default=["angular", "cross_entropy", "taylor", "magnitude", "random"])
    parser.add_argument("--calib-sequences", type=int, default=128)
    parser.add_argument("--calib-length", type=int, default=128)
    parser.add_argument("--ce-sequences", type=int, default=None, help="cross-entropy calibration sequences")
    parser.add_argument("--windows", choices=WINDOW_LAYOUTS, default="spread", help="calibration window layout")
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/table46"))
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.model.exists():
        from onnxdepth.models_zoo import ensure_export

        args.model = ensure_export("smollm2-135m", "text-generation", args.model.parent)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = args.work_dir / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    # Rows without a layout predate the spread windows: they were calibrated on the leading ones.
    done = {row["metric"]: row for row in rows if row.get("windows", "head") == args.windows}
    for metric in args.metrics:
        if metric in done:
            continue
        t0 = time.perf_counter()
        n_seq = args.ce_sequences if metric == "cross_entropy" and args.ce_sequences else args.calib_sequences
        kwargs: dict = dict(granularity="fine")
        scores = None
        if metric == "random":
            kwargs.update(importance="magnitude", ordering="random", seed=0)
        elif metric == "magnitude":
            kwargs.update(importance="magnitude")
        else:
            score_file = args.work_dir / f"scores_{metric}_{args.windows}_{n_seq}x{args.calib_length}.json"
            if not score_file.exists():
                tmp = score_file.with_suffix(".tmp")
                calib_npz = args.work_dir / f"calib-{args.windows}-{n_seq}x{args.calib_length}.npz"
                calib = saved_calibration_tokens(str(DATA / "valid.txt"), args.model, calib_npz, n_seq=n_seq,
                                                 seq_len=args.calib_length, windows=args.windows)
                tmp.write_text(json.dumps(_scores(metric, args.model, calib, n_seq, args.calib_length)))
                tmp.replace(score_file)
            kwargs.update(importance=metric)
            scores = ScoreTable(json.loads(score_file.read_text()))
        score_seconds = time.perf_counter() - t0
        out = args.work_dir / f"smollm2_{metric}.onnx"
        result = prune_file(args.model, out, PruneConfig(ratio=args.ratio, **kwargs), scores=scores)
        ppl = evaluate_perplexity(out, DATA / "test.txt", tokenizer_dir=args.model.parent, ctx=512,
                                  max_tokens=args.max_tokens, progress=False)
        row = {"metric": metric, "reduction": result.reduction, "perplexity": ppl["perplexity"],
               "calib": None if metric in ("random", "magnitude") else f"{n_seq}x{args.calib_length}",
               "windows": args.windows,
               "score_seconds": round(score_seconds, 1), "units": result.pruned_units}
        with results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[metric] = row
        print(f"{metric}: perplexity {row['perplexity']:.2f} at {row['reduction']:.1%} (scoring {score_seconds:.0f} s)",
              flush=True)
    print("\n| importance | calibration | reduction | WikiText-2 test perplexity |\n|---|---|---|---|")
    for metric in args.metrics:
        row = done.get(metric)
        if row:
            print(f"| {metric} | {row['calib'] or '-'} | {row['reduction']:.1%} | {row['perplexity']:,.1f} |")
    print(f"\nresults in {results} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
