"""Angular importance of every fine unit of SmolLM2-135M: block-local (onnxdepth) vs the whole-model way.

    python tools/bench_angular.py [--model PATH/model.onnx] [--sequences 32] [--length 128]
        [--whole-units 12] [--threads N] [--json OUT.json] [--taylor-memory]

(a) block-local, what `onnxdepth score --importance angular` does (`angular_scores`): one run of the
    full model caches every layer's input and output; each unit is pruned in its own cut-out layer and
    only that layer is re-run on the cached input.
(b) the whole-model way: for each unit, Prune(f) in the full model (a fork of one PruneSession, so no
    shape inference per unit), export, build an ORT session, run the whole pruned model with the layer's
    output as an extra output, compare with the unpruned model's (one reference run, counted once).
    (b) is slow, so only --whole-units units (spread over layers and kinds) are measured and the time is
    extrapolated to all units; the max |(a) - (b)| over those units checks that both agree.

Both use the same calibration tokens: the first --sequences x --length tokens of WikiText-2 *valid*,
the same ONNX Runtime threads and batch size. --taylor-memory is a placeholder (Taylor importance is
not implemented yet).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnxdepth.calibration import calibration_tokens
from onnxdepth.graph.extract import with_extra_outputs
from onnxdepth.graph.io import load_model
from onnxdepth.importance.angular import angular_distance, angular_scores, layer_boundaries, model_feeds
from onnxdepth.prune.session import PruneSession

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def default_model() -> Path:
    fast = Path("/tmp/m/smol_nopast/model.onnx")
    return fast if fast.exists() else ROOT / "models" / "out" / "smollm2-135m" / "model.onnx"


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_batched(model, names: list[str], tokens: np.ndarray, batch_size: int, threads: int
                 ) -> dict[str, list[np.ndarray]]:
    """Run MODEL (all of it) on TOKENS in batches, returning the tensors NAMES per batch."""
    session = _session(with_extra_outputs(model, names), threads)
    inputs = {i.name: i for i in session.get_inputs()}
    out = {n: [] for n in names}
    for start in range(0, len(tokens), batch_size):
        values = session.run(names, model_feeds(inputs, tokens[start:start + batch_size]))
        for n, v in zip(names, values):
            out[n].append(v)
    return out


def _mean_distance(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    total, count = 0.0, 0
    for a, b in zip(reference, other):
        d = angular_distance(a, b)
        total, count = total + float(d.sum()), count + d.size
    return total / max(count, 1)


def _counterpart(pruned, original, tensor: str) -> str:
    """TENSOR in PRUNED: the same name, or, when pruning bypassed its producer (e.g. the last layer's
    residual Add at block/sublayer granularity), what now feeds the same slot of the node that read it."""
    if any(tensor in n.output for n in pruned.graph.node):
        return tensor
    for node in original.graph.node:
        for k, name in enumerate(node.input):
            if name == tensor:
                return next(n for n in pruned.graph.node if n.name == node.name).input[k]
    raise RuntimeError(f"{tensor}: no counterpart in the pruned model")


def pick_units(unit_ids: list[str], n: int) -> list[str]:
    """N units spread over the layers (first and last included), cycling through the unit kinds."""
    if n >= len(unit_ids):
        return list(unit_ids)
    by_layer: dict[str, list[str]] = {}
    for unit_id in unit_ids:
        by_layer.setdefault(unit_id.split(".")[0], []).append(unit_id)
    layers = list(by_layer.values())
    picked = []
    for i, x in enumerate(np.linspace(0, len(layers) - 1, n)):
        kinds = layers[int(round(x))]
        unit = kinds[i % len(kinds)]
        if unit not in picked:
            picked.append(unit)
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: /tmp/m/smol_nopast/model.onnx if it "
                                                                  "exists, else models/out/smollm2-135m/model.onnx")
    parser.add_argument("--data", type=Path, default=DATA, help="calibration text (default WikiText-2 valid)")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--whole-units", type=int, default=12,
                        help="units measured the whole-model way (b); the rest is extrapolated (default 12)")
    parser.add_argument("--taylor-memory", action="store_true",
                        help="also measure Taylor importance's memory (not available yet)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    model_path = args.model or default_model()
    if args.taylor_memory:
        print("--taylor-memory: not available (Taylor importance is not implemented yet); skipped")
    if not model_path.exists():
        print(f"bench_angular: {model_path}: no such model (export SmolLM2 first, see tools/smollm2_granularity.py)",
              file=sys.stderr)
        return 1
    threads = args.threads or None

    t = time.perf_counter()
    model = load_model(model_path)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    tokens = calibration_tokens(str(args.data), model_path, n_seq=args.sequences, seq_len=args.length)
    tokenize_s = time.perf_counter() - t
    t = time.perf_counter()
    session = PruneSession(model)
    setup_s = time.perf_counter() - t
    units = session.structural_ids()
    print(f"model {model_path}: {len(session.layers)} layers, {len(units)} fine units; calibration "
          f"{tokens.shape[0]} x {tokens.shape[1]} tokens of {args.data.name}; batch {args.batch_size}, "
          f"threads {args.threads or 'ORT default'}")
    print(f"  load {load_s:.1f} s, tokenize {tokenize_s:.1f} s, PruneSession {setup_s:.1f} s (shared, not counted)",
          flush=True)

    # (a) block-local.
    t = time.perf_counter()
    local = angular_scores(model, session, tokens, batch_size=args.batch_size, threads=threads, progress=False)
    local_s = time.perf_counter() - t
    print(f"(a) block-local angular_scores, all {len(local)} units: {local_s:.1f} s "
          f"({local_s / len(local):.2f} s/unit incl. the caching run)", flush=True)
    gc.collect()

    # (b) whole model, on a subset.
    chosen = pick_units(units, args.whole_units)
    boundaries = layer_boundaries(session)
    t = time.perf_counter()
    reference = _run_batched(model, sorted({n for pair in boundaries for n in pair}), tokens, args.batch_size,
                             threads)
    reference_s = time.perf_counter() - t
    print(f"(b) whole-model reference run (once): {reference_s:.1f} s", flush=True)
    per_unit, stages, diffs, whole = [], {"prune": 0.0, "export": 0.0, "session+run": 0.0}, {}, {}
    for unit_id in chosen:
        layer = int(unit_id.split(".")[0].removeprefix("layer"))
        end = boundaries[layer][1]
        t0 = time.perf_counter()
        fork = session.fork()
        fork.apply(fork.plan(unit_id))
        t1 = time.perf_counter()
        pruned = fork.to_model(model)
        del fork
        t2 = time.perf_counter()
        name = _counterpart(pruned, model, end)
        out = _run_batched(pruned, [name], tokens, args.batch_size, threads)[name]
        del pruned
        t3 = time.perf_counter()
        whole[unit_id] = _mean_distance(reference[end], out)
        diffs[unit_id] = abs(whole[unit_id] - local[unit_id])
        per_unit.append(t3 - t0)
        stages["prune"] += t1 - t0
        stages["export"] += t2 - t1
        stages["session+run"] += t3 - t2
        print(f"    {unit_id:<20} {t3 - t0:6.1f} s  whole {whole[unit_id]:.8f}  block-local {local[unit_id]:.8f}  "
              f"|diff| {diffs[unit_id]:.2e}", flush=True)
        gc.collect()
    measured_s = reference_s + sum(per_unit)
    mean_unit = sum(per_unit) / len(per_unit)
    extrapolated_s = reference_s + mean_unit * len(units)
    max_diff = max(diffs.values())

    n = len(chosen)
    rows = [
        (f"block-local (a), measured, all {len(units)} units", f"{local_s:9.1f} s"),
        (f"whole-model (b), measured, {n} units + reference run",
         f"{measured_s:9.1f} s  ({mean_unit:.1f} s/unit: prune {stages['prune'] / n:.1f}, export "
         f"{stages['export'] / n:.1f}, session+run {stages['session+run'] / n:.1f}; reference {reference_s:.1f})"),
        (f"whole-model (b), EXTRAPOLATED to all {len(units)} units",
         f"{extrapolated_s:9.1f} s  (= {reference_s:.1f} + {len(units)} x {mean_unit:.1f})"),
        ("speedup (a) vs (b), all units (extrapolated)", f"{extrapolated_s / local_s:9.1f} x"),
        ("speedup per unit ((b) s/unit over (a) s/unit)", f"{mean_unit / (local_s / len(units)):9.1f} x"),
        (f"max |score (a) - score (b)| over the {n} units", f"{max_diff:11.3e}"),
    ]
    print()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}} {value}")
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(model_path), "units": len(units), "sequences": int(tokens.shape[0]),
            "length": int(tokens.shape[1]), "batch_size": args.batch_size, "threads": args.threads,
            "block_local_s": local_s, "whole_reference_s": reference_s, "whole_units": chosen,
            "whole_per_unit_s": dict(zip(chosen, per_unit)), "whole_measured_s": measured_s,
            "whole_extrapolated_s": extrapolated_s, "speedup": extrapolated_s / local_s,
            "max_abs_diff": max_diff, "scores_block_local": local, "scores_whole": whole}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
