"""The latency objective on SmolLM2 (with past): prefill-128 and cached decode, against the parameter objective.

    python tools/latency_smollm2.py [--latency-ratio 0.2] [--work-dir artifacts/latency_smollm2] [--runs 10]

Fine units scored once by angular importance on the default calibration (text sampled from the model),
saved as a score table and reused by every prune. For each phase (prefill: 128 new tokens and no past;
decode: 1 new token after 128 cached), `--objective latency --latency-ratio R` is profiled on that phase's
input shapes, then `--ratio P` at its parameter reduction P (the parameter objective) with the same scores.
Every model is then timed in one process, interleaved (prefill of 128 tokens, then 32 cached decode steps,
2 threads, median of --runs), and the held-out fidelity line of each plan is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxdepth import api  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.demo import _prefill_and_decode  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.models_zoo import ensure_export  # noqa: E402
from onnxdepth.runtime import open_session  # noqa: E402
from onnxdepth.scores import ScoreTable  # noqa: E402

PAST, NEW = 128, 128


def phase_shapes(model, phase: str) -> dict:
    """Concrete input shapes of one phase: prefill (NEW tokens, empty cache) or decode (1 token, PAST cached)."""
    new, past = (NEW, 0) if phase == "prefill" else (1, PAST)
    shapes = {"input_ids": (1, new), "attention_mask": (1, past + new), "position_ids": (1, new)}
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            shapes[value.name] = (1, dims[1], past, dims[3])  # [batch, kv heads, cached length, head dim]
    return {k: v for k, v in shapes.items() if k in {i.name for i in model.graph.input}}


def timings(paths: list[Path], runs: int) -> list[tuple[float, float]]:
    """Median (prefill ms, decode ms per token) of each model, runs interleaved across the models."""
    sessions = [open_session(str(p), threads=2) for p in paths]
    ids = np.random.default_rng(0).integers(100, 10000, size=(1, NEW), dtype=np.int64)
    samples = [[] for _ in paths]
    for run in range(runs + 1):
        for k, session in enumerate(sessions):
            prefill, decode = _prefill_and_decode(session, ids, 32)
            if run:  # the first round warms up
                samples[k].append((prefill * 1e3, decode * 1e3 / 32))
    return [tuple(np.median(np.array(s), axis=0)) for s in samples]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ratio", type=float, default=0.2)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/latency_smollm2"))
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    source = ensure_export("smollm2-135m", "text-generation-with-past", Path("models/out/smollm2-135m-with-past"),
                           log=lambda m: print(m, file=sys.stderr))
    model = load_model(source)
    table_path = args.work_dir / "scores.csv"
    if not table_path.exists():
        config = PruneConfig(0.0, importance="angular", granularity="fine",
                             calibration=Calibration(None).for_model(source))
        scores = api.score_model(model, config)
        table_path.write_text(scores.to_csv())
    scores = ScoreTable.read_csv(str(table_path))
    rows = []
    for phase in ("prefill", "decode"):
        shapes = phase_shapes(model, phase)
        common = {"importance": "angular", "granularity": "fine", "input_shapes": shapes}
        out = args.work_dir / f"{phase}_lat{args.latency_ratio:g}.onnx"
        config = PruneConfig(0.0, objective="latency", latency_ratio=args.latency_ratio, **common)
        plan = api.prune_file(source, out, config, scores=scores).plan
        rows.append({"phase": phase, "run": f"latency --latency-ratio {args.latency_ratio:g}", "path": out, "plan": plan})
        matched = round(plan["reduction"], 4)
        out = args.work_dir / f"{phase}_par{matched:g}.onnx"
        plan = api.prune_file(source, out, PruneConfig(matched, **common), scores=scores).plan
        rows.append({"phase": phase, "run": f"params --ratio {matched:g}", "path": out, "plan": plan})
    measured = timings([source] + [r["path"] for r in rows], args.runs)
    base_prefill, base_decode = measured[0]
    print(f"unpruned: prefill-{NEW} {base_prefill:.1f} ms, decode {base_decode:.2f} ms/token (2 threads)")
    print("| profiled on | run | units | params removed | latency removed (profiled) | prefill-128 removed | "
          "decode removed | top-1 agreement | KL |")
    print("|---|---|---|---|---|---|---|---|---|")
    record = []
    for row, (prefill, decode) in zip(rows, measured[1:]):
        plan, fidelity = row["plan"], row["plan"].get("fidelity") or {}
        profiled = (plan.get("latency") or {}).get("reduction")
        line = {"phase": row["phase"], "run": row["run"], "units": len(plan["steps"]), "params": plan["reduction"],
                "profiled": profiled, "prefill_ms": prefill, "decode_ms": decode,
                "prefill_removed": 1 - prefill / base_prefill, "decode_removed": 1 - decode / base_decode,
                "top1": fidelity.get("value"), "kl": fidelity.get("kl")}
        record.append(line)
        print(f"| {row['phase']} | `{row['run']}` | {line['units']} | {line['params']:.1%} | "
              f"{'-' if profiled is None else f'{profiled:.1%}'} | {line['prefill_removed']:.1%} ({prefill:.1f} ms) | "
              f"{line['decode_removed']:.1%} ({decode:.2f} ms) | {line['top1']:.3f} | {line['kl']:.3f} |")
    (args.work_dir / "latency_smollm2.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
