"""One healing step of the pruned SmolLM2 (4 x 128 tokens: teacher logits from ONNX Runtime, forward, KL + CE,
backward, AdamW) with glibc's default allocator settings and with onnxdepth's freed-memory reuse
(`onnxdepth/allocator.py`), each in a process of its own (the setting is process-wide): median step time,
minor page faults per step, peak RSS.

    python tools/heal_allocator.py [--pruned artifacts/heal/p30.onnx] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "models" / "out" / "smollm2-135m-with-past" / "model.onnx"


def _one_setting(pruned: str, steps: int, reuse: bool) -> dict:
    import numpy as np
    import torch

    from onnxdepth.allocator import reuse_freed_memory
    from onnxdepth.graph.io import load_model
    from onnxdepth.heal.objectives import LMDistillation
    from onnxdepth.heal.student import Student

    torch.set_num_threads(2)
    model = load_model(pruned)
    student = Student(model)
    objective = LMDistillation(str(TEACHER), model, label_weight=1.0)
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-6)
    tokens = np.random.default_rng(0).integers(0, 49152, (4, 128)).astype(np.int64)
    times, faults = [], []
    with reuse_freed_memory(reuse):
        for _ in range(steps):
            before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            target = objective.targets(tokens)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                output = objective.output(torch, student.module, tokens)
            loss = objective.loss(torch, output, target, tokens)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            del output, loss, target
            times.append(time.perf_counter() - started)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"step_s": statistics.median(times[2:]), "faults": statistics.median(faults[2:]),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", default=str(ROOT / "artifacts" / "heal" / "p30.onnx"))
    parser.add_argument("--steps", type=int, default=6, help="steps per setting (the first two are warm-up)")
    parser.add_argument("--child", choices=("plain", "reuse"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one_setting(args.pruned, max(args.steps, 3), args.child == "reuse")))
        return
    print("| allocator | step time (median) | minor faults per step | peak RSS |\n| --- | --- | --- | --- |")
    for setting, name in (("plain", "glibc defaults"), ("reuse", "freed memory reused")):
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--pruned", args.pruned, "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {result['step_s']:.2f} s | {result['faults']:,.0f} | {result['peak_gb']:.2f} GB |",
              flush=True)


if __name__ == "__main__":
    main()
