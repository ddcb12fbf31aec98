"""Peak memory and time of Taylor scoring (Eq. 3.8-3.10) on SmolLM2-135M, batch 4 x 128 tokens.

    python tools/taylor_memory.py [--model DIR/model.onnx] [--batch 4] [--length 128] [--batches 2]

Runs in its own process so that ru_maxrss (peak resident memory) measures this work alone. Prints the
resident memory after loading the model, the peak during Taylor scoring (onnx2torch conversion, forward
and backward in batches of --batch sequences; gradients accumulate across --batches batches), and the
time per batch.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path



def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/out/smollm2-135m/model.onnx"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--plain-malloc", action="store_true",
                        help="glibc's default allocator settings (freed blocks unmapped) instead of onnxdepth's reuse")
    args = parser.parse_args()
    if not args.model.exists():
        from onnxdepth.models_zoo import ensure_export

        args.model = ensure_export("smollm2-135m", "text-generation", args.model.parent)
    from onnxdepth.calibration import calibration_tokens
    from onnxdepth.graph.io import load_model
    import torch

    from onnxdepth.importance.taylor import TaylorLMScores

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "valid.txt"
    tokens = calibration_tokens(str(data) if data.exists() else None, args.model,
                                n_seq=args.batch * args.batches, seq_len=args.length)
    model = load_model(args.model)
    loaded = _rss_mib()
    load_before = os.getloadavg()[0]  # another job on the cores shows up as a higher time per batch
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    scores = TaylorLMScores(model, tokens, batch_size=args.batch, progress=False,
                            reuse_memory=not args.plain_malloc)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    params = sum(v.size for v in scores.scores.values())
    print(f"Taylor scoring of {args.model} on {len(tokens)} x {args.length} tokens, batches of {args.batch}:")
    print(f"  resident after loading the ONNX model: {loaded:,.0f} MiB")
    print(f"  peak resident during scoring:          {peak:,.0f} MiB (+{peak - loaded:,.0f} MiB)")
    print(f"  weights scored: {len(scores.scores)} tensors, {params:,} values")
    print(f"  time: {seconds:.1f} s ({seconds / args.batches:.1f} s per batch incl. conversion)")
    timings = scores.timings
    print(f"  of which: onnx2torch conversion {timings['convert']:.1f} s, forward per batch "
          f"{', '.join(f'{t:.1f}' for t in timings['forward'])} s, backward per batch "
          f"{', '.join(f'{t:.1f}' for t in timings['backward'])} s, (dE/dw * w)^2 {timings['scores']:.1f} s")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    print(f"  minor page faults while scoring: {faults:,}; allocator: "
          f"{'glibc defaults' if args.plain_malloc else 'freed memory reused'}")
    print(f"  torch threads: {torch.get_num_threads()}, cores available: {len(os.sched_getaffinity(0))}, "
          f"load average before the run: {load_before:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
