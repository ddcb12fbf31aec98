"""Kill `onnxdepth prune` again and again: SIGINT, SIGTERM or SIGKILL at a random moment, then the files judged.

    python tools/kill_test.py --repeat 50 --seed 0

Each trial prunes a small model (one file, or weights in a .data file) to the same OUT per model and sends a
random signal after a random delay within one uninterrupted prune's duration (measured first). After each
SIGKILL and at the end, a prune runs to completion and must remove the killed runs' temporaries; then two
prunes race to one OUT. The judging is tests/fuzz/kill_harness.py, which tests/test_kill.py also uses.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fuzz")]

import kill_harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="number of kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL", help="comma-separated signals to draw from")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    signals = args.signals.split(",")
    passed, total = collections.Counter(), collections.Counter()
    codes: collections.Counter = collections.Counter()  # how each killed prune ended
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxdepth-kill-") as work:
        work = Path(work)
        models = kill_harness.make_models(work / "inputs")
        outs = {kind: work / f"out-{kind}" / "out.onnx" for kind in models}
        for out in outs.values():
            out.parent.mkdir()
        calibrate = time.perf_counter()
        kill_harness.finish(models["plain"], work / "inputs" / "calibrated.onnx")
        duration = time.perf_counter() - calibrate
        print(f"one prune takes {duration:.1f} s; {args.repeat} kills within 1.1x that", flush=True)
        dead: dict[str, set[int]] = {kind: set() for kind in models}
        for n in range(args.repeat):
            kind, sig = rng.choice(sorted(models)), rng.choice(signals)
            result = kill_harness.trial(models[kind], outs[kind], sig, rng.uniform(0, 1.1 * duration), dead[kind])
            key = f"{sig} {kind}"
            total[key] += 1
            codes[f"{sig} -> {result.code}" if result.sent else f"{sig} after the prune had ended"] += 1
            if result.failure is None:
                passed[key] += 1
            else:
                failures.append(f"trial {n}: {key} after {result.delay:.2f} s (exit {result.code}): {result.failure}")
                print(f"FAIL {failures[-1]}", flush=True)
            if sig == "SIGKILL" or n == args.repeat - 1:
                problem = kill_harness.finish(models[kind], outs[kind])  # must clean the dead run's leftovers
                total["clean-up prune"] += 1
                passed["clean-up prune"] += problem is None
                if problem:
                    failures.append(f"clean-up after trial {n} ({kind}): {problem}")
                    print(f"FAIL {failures[-1]}", flush=True)
                dead[kind].clear()
        for kind, model in models.items():
            (work / f"race-{kind}").mkdir()
            problem = kill_harness.race(model, work / f"race-{kind}" / "out.onnx")
            total[f"race {kind}"] += 1
            passed[f"race {kind}"] += problem is None
            if problem:
                failures.append(f"race {kind}: {problem}")
    elapsed = time.perf_counter() - started
    kills = sum(n for key, n in total.items() if key.startswith("SIG"))
    kills_passed = sum(n for key, n in passed.items() if key.startswith("SIG"))
    print(f"{kills_passed} of {kills} kills passed in {elapsed:.1f} s")
    for key in sorted(total):
        print(f"  {key:24} {passed[key]:4} / {total[key]}")
    print("  exit statuses: " + ", ".join(f"{key} x{n}" for key, n in sorted(codes.items())))
    for failure in failures:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
