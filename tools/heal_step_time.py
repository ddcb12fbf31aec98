"""One healing step of SmolLM2 (4 x 128 tokens, KL to precomputed teacher logits, AdamW, full fine-tuning)
through the ONNX graph in PyTorch (onnx2torch, what `onnxdepth heal` trains) against the same step in
transformers' LlamaForCausalLM, side by side in one process (interleaved, median of --steps each), and each
side's peak memory in a process of its own.

    python tools/heal_step_time.py [--onnx models/out/smollm2-135m-with-past/model.onnx] [--hf artifacts/smollm2-hf]
        [--compile]   # also the ONNX side under torch.compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np


def _kl(torch, logits, teacher):
    student = torch.log_softmax(logits.float(), dim=-1)
    reference = torch.log_softmax(teacher, dim=-1)
    return (reference.exp() * (reference - student)).sum(-1).mean()


def _onnx_step(args, tokens, teacher, compiled: bool = False):
    import onnx  # noqa: F401
    import torch

    from onnxdepth.graph.io import load_model
    from onnxdepth.heal.objectives import LMDistillation
    from onnxdepth.heal.student import Student

    model = load_model(args.onnx)
    student = Student(model, checkpoint_segments=args.checkpoint)
    objective = LMDistillation(args.onnx, model)
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-5)
    module = torch.compile(student.module) if compiled else student.module

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            logits = objective.student_logits(module(*objective.student_args(torch, tokens)))
        loss = _kl(torch, logits, teacher)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step, student.trainable_count()


def _hf_step(args, tokens, teacher):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(args.hf, dtype=torch.float32)
    model.train(False)  # no dropout, as the ONNX graph
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.from_numpy(tokens)

    def step():
        loss = _kl(torch, model(input_ids=ids).logits, teacher)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step, sum(p.numel() for p in model.parameters())


def _inputs(args):
    import torch

    from onnxdepth.heal.objectives import LMDistillation
    from onnxdepth.graph.io import load_model

    tokens = np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq_len)).astype(np.int64)
    objective = LMDistillation(args.onnx, load_model(args.onnx))
    teacher = torch.from_numpy(objective.teacher_logits(tokens))
    del objective  # the teacher's session: not part of either side's memory
    return tokens, teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default="models/out/smollm2-135m-with-past/model.onnx")
    parser.add_argument("--hf", default="artifacts/smollm2-hf")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--only", choices=("onnx", "hf", "compiled"),
                        help="one side alone, printing its peak RSS (JSON)")
    parser.add_argument("--checkpoint", type=int, default=0, metavar="N",
                        help="the ONNX side with gradient checkpointing in N segments (heal --grad-checkpoint N)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the ONNX side under torch.compile (inductor; its first step compiles)")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    tokens, teacher = _inputs(args)
    builders = {"onnx": _onnx_step, "hf": _hf_step}
    if args.compile or args.only == "compiled":
        builders["compiled"] = lambda *a: _onnx_step(*a, compiled=True)
    if args.only:
        import gc
        import threading

        import psutil

        gc.collect()
        process, peak, done = psutil.Process(), [0], threading.Event()
        base = process.memory_info().rss

        def sample():  # RSS every 20 ms: the peak of building the side and two steps, not of the inputs
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        step, count = builders[args.only](args, tokens, teacher)
        for _ in range(2):
            step()
        done.set()
        sampler.join()
        print(json.dumps({"side": args.only, "trainable": count, "peak_rss_mib": round(peak[0] / 2**20),
                          "above_inputs_mib": round((peak[0] - base) / 2**20)}))
        return
    steps = {name: build(args, tokens, teacher) for name, build in builders.items()}
    times = {name: [] for name in steps}
    warmup = {}
    for round_ in range(args.steps + 1):  # round 0 warms up every side (and compiles the compiled one)
        for name, (step, _) in steps.items():
            started = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - started)
            else:
                warmup[name] = time.perf_counter() - started
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.batch} x {args.seq_len} tokens, {torch.get_num_threads()} threads, median of {args.steps} "
          "interleaved steps (forward, KL, backward, AdamW):")
    for name, (_, count) in steps.items():
        print(f"  {name:>4}: {medians[name]:.2f} s  ({count:,} trained values; all: "
              f"{', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"  onnx / hf: {medians['onnx'] / medians['hf']:.2f}x")
    if "compiled" in medians:
        print(f"  compiled / onnx: {medians['compiled'] / medians['onnx']:.2f}x (first step, compiling: "
              f"{warmup['compiled']:.0f} s)")
    for side in steps:
        done = subprocess.run([sys.executable, __file__, "--only", side, "--onnx", args.onnx, "--hf", args.hf,
                               "--batch", str(args.batch), "--seq-len", str(args.seq_len),
                               "--checkpoint", str(args.checkpoint)],
                              capture_output=True, text=True)
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
        print(f"  peak memory, {side} alone: {line}")


if __name__ == "__main__":
    main()
