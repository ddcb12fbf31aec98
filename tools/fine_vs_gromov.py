"""Fine-grained selection modes vs Gromov et al.'s contiguous blocks on SmolLM2 (issue 4's target table).

    python tools/fine_vs_gromov.py [--model DIR/model.onnx] [--ratios 0.1 0.2 0.3]
        [--modes angular angular:rescore=4 angular:global cross_entropy:grouped:rescore=1:shortlist=20 gromov]
        [--calib-sequences 32] [--windows spread|head] [--max-tokens 32768]

A mode is IMPORTANCE[:grouped|:global][:rescore=N][:shortlist=K][:seq=S][:len=T] (fine granularity; S
and T override the calibration's --calib-sequences and 128-token length for that mode), or ``gromov`` (block granularity, angular, the most similar contiguous
run of layers). A fine mode runs once, to the largest ratio, and hands over the model at each smaller
ratio on the way (checkpoints: the selection is one sequence of units); Gromov's choice depends on the
ratio, so it runs per ratio. Calibration: WikiText-2 *valid*, S x T tokens in windows spread evenly over
the split (``--windows head``: the leading S x T tokens, how the numbers before the spread layout were
measured), fixed once per (S, T) in an .npz under --work-dir. Perplexity: WikiText-2
*test*, the first --max-tokens tokens, 512-token windows. Every point is one JSONL row under --work-dir,
so an interrupted run resumes; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from onnxdepth.api import prune_model
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.calibration import WINDOW_LAYOUTS, saved_calibration_tokens
from onnxdepth.eval import evaluate_perplexity
from onnxdepth.models_zoo import ensure_export
from onnxdepth.graph.io import load_model, save_model_atomic

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"


def parse_mode(mode: str, calib_sequences: int) -> dict:
    """'cross_entropy:grouped:rescore=1:shortlist=20' -> PruneConfig fields (calib_sequences / calib_length:
    the calibration's)."""
    if mode == "gromov":
        return {"granularity": "block", "importance": "angular", "calib_sequences": calib_sequences, "calib_length": 128}
    importance, *options = mode.split(":")
    kwargs = {"granularity": "fine", "importance": importance, "calib_sequences": calib_sequences, "calib_length": 128}
    for option in options:
        key, _, value = option.partition("=")
        if key in ("grouped", "global"):
            kwargs["ranking"] = key
        elif key == "rescore":
            kwargs["rescore_every"] = int(value)
        elif key == "shortlist":
            kwargs["shortlist"] = int(value)
        elif key == "seq":
            kwargs["calib_sequences"] = int(value)
        elif key == "len":
            kwargs["calib_length"] = int(value)
        else:
            raise SystemExit(f"mode {mode}: unknown option {option!r}")
    return kwargs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--modes", nargs="+", default=["angular", "angular:rescore=4", "angular:global",
                                                       "cross_entropy:grouped:rescore=1:shortlist=20:seq=8:len=512",
                                                       "gromov"])
    parser.add_argument("--calib-sequences", type=int, default=32)
    parser.add_argument("--windows", choices=WINDOW_LAYOUTS, default="spread")
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/fine_vs_gromov"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    model_path = args.model
    if model_path is None:
        model_path = ensure_export("smollm2-135m", "text-generation", Path("models/out/smollm2-135m"))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / "results.jsonl"
    done: dict[tuple[str, float], dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            # Rows of the other window layout are another experiment (rows from before the field: head).
            if row["mode"] == "unpruned" or row.get("windows", "head") == args.windows:
                done[(row["mode"], row["ratio"])] = row
    ratios = sorted(args.ratios)

    def perplexity(path: Path) -> float:
        return evaluate_perplexity(str(path), str(DATA / "test.txt"), tokenizer_dir=str(model_path.parent),
                                   max_tokens=args.max_tokens, ctx=512, threads=args.threads,
                                   progress=False)["perplexity"]

    def calib_file(n_seq: int, seq_len: int) -> str:
        """The calibration tokens of an (S, T) mode, cut once from WikiText-2 valid."""
        return saved_calibration_tokens(str(DATA / "valid.txt"), model_path,
                                        args.work_dir / f"calib-{args.windows}-{n_seq}x{seq_len}.npz",
                                        n_seq=n_seq, seq_len=seq_len, windows=args.windows)

    def record(mode: str, ratio: float, result, seconds: float) -> None:
        out = args.work_dir / "point.onnx"
        save_model_atomic(result.model, out)
        row = {"mode": mode, "windows": args.windows, "ratio": ratio, "reduction": result.reduction, "perplexity": perplexity(out),
               "select_seconds": round(seconds), "pruned": result.pruned_units}
        out.unlink()
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[(mode, ratio)] = row
        print(f"{mode:<52}{ratio:>6}{row['reduction']:>10.2%}{row['perplexity']:>12.2f}   {seconds:.0f} s",
              flush=True)

    if ("unpruned", 0.0) not in done:
        row = {"mode": "unpruned", "ratio": 0.0, "reduction": 0.0, "perplexity": perplexity(model_path)}
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[("unpruned", 0.0)] = row
    model = load_model(model_path)
    for mode in args.modes:
        kwargs = parse_mode(mode, args.calib_sequences)
        todo = [r for r in ratios if (mode, r) not in done]
        if not todo:
            continue
        n_seq, seq_len = kwargs.pop("calib_sequences"), kwargs.pop("calib_length")
        calibration = Calibration(calib_file(n_seq, seq_len), n_seq, seq_len, model_path=str(model_path))
        config = PruneConfig(ratio=todo[-1], calibration=calibration, **kwargs)
        t0 = time.perf_counter()
        if mode == "gromov":
            for ratio in todo:
                record(mode, ratio, prune_model(model, replace(config, ratio=ratio)), time.perf_counter() - t0)
            continue

        def on_checkpoint(ratio, result, mode=mode):
            if (mode, ratio) not in done:
                record(mode, ratio, result, time.perf_counter() - t0)

        result = prune_model(model, config, checkpoints=todo[:-1], on_checkpoint=on_checkpoint)
        record(mode, todo[-1], result, time.perf_counter() - t0)

    unpruned = done[("unpruned", 0.0)]["perplexity"]
    print(f"\nWikiText-2 test perplexity ({args.max_tokens} tokens), unpruned {unpruned:.2f}")
    print(f"{'mode':<52}" + "".join(f"{r:>20}" for r in ratios))
    for mode in args.modes:
        cells = []
        for r in ratios:
            row = done.get((mode, r))
            cells.append(f"{row['perplexity']:>11.1f} ({row['reduction']:.1%})" if row else f"{'-':>20}")
        print(f"{mode:<52}" + "".join(f"{c:>20}" for c in cells))
    print(f"results in {results_path}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
