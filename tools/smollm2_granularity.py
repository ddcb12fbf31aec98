"""SmolLM2-135M pruned at several ratios and granularities, WikiText-2 test perplexity through ONNX Runtime.

    python tools/smollm2_granularity.py [--model DIR/model.onnx] [--ratios 0.1 0.2 0.3 0.4]
        [--granularities fine sublayer block] [--importance angular] [--max-tokens 32768]

Scores are computed once per granularity (block-local angular distance on WikiText-2 *valid*, 32 x 128
tokens; block granularity uses Gromov et al.'s contiguous choice) and reused for every ratio. Each
point (pruned model + perplexity) is cached under --work-dir, so an interrupted run resumes.
Without --model the SmolLM2 export is built from the packaged GGUF into models/out/smollm2-135m/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth.api import prune_file, score_units
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.eval import evaluate_perplexity
from onnxdepth.models_zoo import ensure_export
from onnxdepth.graph.io import load_model
from onnxdepth.prune.session import PruneSession

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--granularities", nargs="+", default=["fine", "sublayer", "block"])
    parser.add_argument("--importance", default="angular")
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/smollm2_granularity"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    model_path = args.model
    if model_path is None:
        model_path = ensure_export("smollm2-135m", "text-generation", Path("models/out/smollm2-135m"))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["granularity"], row["ratio"], row["importance"])] = row
    test = DATA / "test.txt"
    valid = DATA / "valid.txt"

    def record(row):
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[(row["granularity"], row["ratio"], row["importance"])] = row
        print(f"{row['granularity']:<9}{row['ratio']:>6}{row['reduction']:>10.2%}{row['perplexity']:>12.2f}"
              f"   {row['units']} units", flush=True)

    print(f"{'gran.':<9}{'ratio':>6}{'reduction':>10}{'perplexity':>12}")
    if ("none", 0.0, "none") not in done:
        ppl = evaluate_perplexity(str(model_path), str(test), max_tokens=args.max_tokens, ctx=512,
                                  threads=args.threads, progress=False)
        record({"granularity": "none", "ratio": 0.0, "importance": "none", "reduction": 0.0,
                "perplexity": ppl["perplexity"], "units": 0, "pruned": []})
    model = None
    for granularity in args.granularities:
        scores = None
        for ratio in args.ratios:
            if (granularity, ratio, args.importance) in done:
                continue
            if scores is None and args.importance != "magnitude":
                model = model or load_model(model_path)
                session = PruneSession(model, granularity=granularity)
                t0 = time.perf_counter()
                scores = score_units(model, session, args.importance, Calibration(str(valid), model_path=model_path))
                print(f"  {granularity}: {args.importance} scores in {time.perf_counter() - t0:.0f} s", flush=True)
            out = args.work_dir / f"smollm2-{granularity}-{ratio:g}-{args.importance}.onnx"
            result = prune_file(model_path, out, PruneConfig(ratio=ratio, granularity=granularity,
                                                             importance=args.importance), scores=scores)
            ppl = evaluate_perplexity(str(out), str(test), tokenizer_dir=str(model_path.parent),
                                      max_tokens=args.max_tokens, ctx=512, threads=args.threads, progress=False)
            record({"granularity": granularity, "ratio": ratio, "importance": args.importance,
                    "reduction": result.reduction, "perplexity": ppl["perplexity"],
                    "units": len(result.pruned_units), "pruned": result.pruned_units})
            out.unlink()  # keep the disk tidy: the plan JSON beside it records what was pruned
    print(f"results in {results_path}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
