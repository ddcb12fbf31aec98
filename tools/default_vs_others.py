"""The default `prune` against every other importance / ordering we offer, at one ratio (issue 15's table).

    python tools/default_vs_others.py smollm2 [--ratio 0.2] [--calib wikitext|none] [--max-tokens 32768]
    python tools/default_vs_others.py yolov8n [--ratio 0.2]

Each row is one `prune_file` run with the options it names and every other option at its default (so the
reconstruction pass applies wherever the default would apply it). Printed per row: what the plan resolved,
prune wall time, the held-out fidelity line (the plan's `fidelity`), and the task metric: WikiText-2 test
perplexity on the first --max-tokens tokens (SmolLM2) or fidelity mAP50 against the unpruned model on the
packaged photos (`eval --task detection`, 24 images, YOLOv8n). Points are cached under --work-dir
(plan + metric JSON), so an interrupted run resumes; pruned models are deleted after their evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnxdepth.api import prune_file
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.errors import OnnxDepthError
from onnxdepth.models_zoo import ensure_export, packaged_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"

#: Row name -> PruneConfig options (the rest at their defaults).
ROWS = {
    "smollm2": {
        "default": {},
        "magnitude (fine)": {"importance": "magnitude"},
        "angular (fine)": {"importance": "angular"},
        "cross_entropy (fine)": {"importance": "cross_entropy"},
        "taylor (fine)": {"importance": "taylor"},
        "angular sublayer": {"importance": "angular", "granularity": "sublayer"},
        "Gromov blocks, no fit": {"importance": "angular", "granularity": "block", "compensate": "none"},
        "angular (fine), descending": {"importance": "angular", "ordering": "descending"},
        "random ordering (fine)": {"importance": "angular", "ordering": "random"},
    },
    "yolov8n": {
        "default": {},
        "magnitude": {"importance": "magnitude"},
        "angular": {"importance": "angular"},
        "angular, re-measured": {"importance": "angular", "rescore_every": 1, "shortlist": 12},
        "taylor, no refits": {"importance": "taylor", "compensate": "none"},
        "magnitude, no refits": {"importance": "magnitude", "compensate": "none"},
        "taylor, reduced search space": {"importance": "taylor", "search_space": "reduced"},
        "taylor, descending": {"importance": "taylor", "ordering": "descending"},
        "random ordering": {"importance": "taylor", "ordering": "random"},
    },
}


def _model(name: str) -> Path:
    if name == "smollm2":
        return ensure_export("smollm2-135m", "text-generation-with-past", Path("models/out/smollm2-135m-with-past"),
                             log=lambda m: print(m, file=sys.stderr))
    return packaged_model("nudenet-yolov8n")


def _metric(name: str, pruned: Path, source: Path, max_tokens: int) -> float:
    from onnxdepth.eval import tasks

    if name == "smollm2":
        result = tasks.evaluate("perplexity", pruned, reference=source,
                                options={"text": str(DATA / "test.txt"), "max_tokens": max_tokens, "ctx": 512,
                                         "tokenizer": str(source.parent)})
    else:
        result = tasks.evaluate("detection", pruned, reference=source, options={"images": 24, "imgsz": 320})
    return result["value"]


def _point(name: str, row: str, args, source: Path, calib: str | None) -> dict:
    cache = args.work_dir / name / f"{row.replace(' ', '_').replace(',', '')}-{args.ratio:g}-{args.calib}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = args.work_dir / name / "pruned.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = PruneConfig(ratio=args.ratio, calibration=Calibration(calib), **ROWS[name][row])
    started = time.perf_counter()
    try:
        plan = prune_file(source, out, config).plan
    except OnnxDepthError as exc:
        return {"row": row, "error": str(exc)}
    seconds = time.perf_counter() - started
    point = {"row": row, "importance": plan["importance"], "granularity": plan["granularity"],
             "compensation": plan["compensation"]["method"], "reduction": plan["reduction"],
             "seconds": round(seconds, 1), "fidelity": plan.get("fidelity"),
             "metric": _metric(name, out, source, args.max_tokens)}
    out.unlink()
    cache.write_text(json.dumps(point))
    return point


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=ROWS)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--calib", choices=["wikitext", "none"], default="none",
                        help="SmolLM2: calibrate on WikiText-2 valid, or on the default (text sampled from the model)")
    parser.add_argument("--rows", nargs="+", default=None)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/default_vs_others"))
    args = parser.parse_args()
    source = _model(args.model)
    calib = str(DATA / "valid.txt") if args.model == "smollm2" and args.calib == "wikitext" else None
    metric = "WikiText-2 test ppl" if args.model == "smollm2" else "fidelity mAP50 (24 photos)"
    print(f"| {args.model} {args.ratio:g} | resolved | removed | time s | held-out fidelity | {metric} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in args.rows or ROWS[args.model]:
        point = _point(args.model, row, args, source, calib)
        if "error" in point:
            print(f"| {row} | error: {point['error']} | | | | |", flush=True)
            continue
        fidelity = point["fidelity"] or {}
        extra = f", KL {fidelity['kl']:.3f}" if "kl" in fidelity else ""
        print(f"| {row} | {point['importance']}/{point['granularity']}/{point['compensation']} | "
              f"{point['reduction']:.2%} | {point['seconds']:.0f} | {fidelity.get('value', float('nan')):.4f}{extra} | "
              f"{point['metric']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
