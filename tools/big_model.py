"""A Llama-architecture decoder of about 3 GB (random init), exported with past by optimum, and pruned: the
over-2-GB path measured (issue 16).

    python tools/big_model.py [--work-dir artifacts/big_model] [--layers 12] [--ratio 0.2] [--skip-prune]

Builds `LlamaForCausalLM` from a transformers config (hidden 2048, MLP 5632, 16 heads with 4 KV heads,
SmolLM2's 49152-token vocabulary and tokenizer so text can be sampled for calibration, untied LM head:
~742M parameters, ~3.0 GB fp32 at 12 layers), exports it with optimum (`text-generation-with-past`;
external data, since it is over 2 GB), then runs

    onnxdepth prune model.onnx pruned.onnx --ratio 0.2 --importance angular --granularity fine
        --calib-sequences 16 --calib-length 128

under `/usr/bin/time -v` and prints wall time, peak RSS against the file size, and a check that ONNX
Runtime loads and runs the output. The model is built once and reused.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKENIZER = Path("models/out/smollm2-135m-with-past")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build(work: Path, layers: int) -> Path:
    """WORK/onnx/model.onnx (exported once)."""
    model = work / "onnx" / "model.onnx"
    if model.is_file():
        return model
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from onnxdepth.export.hf import export_hf

    if not (TOKENIZER / "tokenizer.json").is_file():
        raise SystemExit(f"{TOKENIZER}: build SmolLM2 first (python models/build_smollm2.py): its tokenizer is used")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    hf = work / "hf"
    started = time.perf_counter()
    LlamaForCausalLM(config).save_pretrained(hf)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / name, hf / name)
    export_hf(hf, work / "onnx", task="text-generation-with-past", overwrite=True)
    shutil.rmtree(hf)
    print(f"built {model} in {time.perf_counter() - started:.0f} s", flush=True)
    return model


def file_bytes(model: Path) -> int:
    """The .onnx file plus every external data file beside it."""
    return sum(p.stat().st_size for p in model.parent.iterdir() if p.is_file() and p.name != "model.onnx") \
        + model.stat().st_size


def prune(model: Path, out: Path, ratio: float) -> None:
    exe = Path(sys.executable).with_name("onnxdepth")
    command = ["/usr/bin/time", "-v", str(exe), "prune", str(model), str(out), "--ratio", str(ratio),
               "--importance", "angular", "--granularity", "fine", "--calib-sequences", "16", "--calib-length", "128"]
    print("$ " + " ".join(command[2:]), flush=True)
    run = subprocess.run(command, capture_output=True, text=True)
    stats = dict(re.findall(r"^\s*(.+?): (.+)$", run.stderr, flags=re.M))
    lines = [line for line in run.stderr.splitlines() if not line.startswith("\t")]
    print("\n".join(lines[-6:]) + "\n" + run.stdout[-2000:])
    peak_kb = int(stats.get("Maximum resident set size (kbytes)", 0))
    size = file_bytes(model)
    print(f"exit {run.returncode}; wall {stats.get('Elapsed (wall clock) time (h:mm:ss or m:ss)')}; peak RSS "
          f"{peak_kb / 2**20:.2f} GiB = {peak_kb * 1024 / size:.2f}x the model's {size / 2**30:.2f} GiB")


def check_output(out: Path) -> None:
    import numpy as np

    from onnxdepth.graph.io import load_model
    from onnxdepth.runtime import open_session
    from onnxdepth.verify import random_feeds
    from onnxdepth.graph.shapes import concrete_input_shapes

    model = load_model(out)
    session = open_session(str(out))
    outputs = session.run(None, random_feeds(model, concrete_input_shapes(model, None)))
    print(f"{out}: ORT runs it ({len(outputs)} outputs, logits {outputs[0].shape}, finite "
          f"{bool(np.isfinite(outputs[0]).all())}); files {file_bytes(out) / 2**30:.2f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/big_model"))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--skip-prune", action="store_true")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = build(args.work_dir, args.layers)
    print(f"{model}: {file_bytes(model) / 2**30:.2f} GiB with external data", flush=True)
    if args.skip_prune:
        return 0
    out_dir = args.work_dir / "pruned"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "model.onnx"
    prune(model, out, args.ratio)
    if out.is_file():
        check_output(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
