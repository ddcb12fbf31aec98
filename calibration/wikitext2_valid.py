"""WikiText-2 *valid* as a ready calibration tensor: windows of token ids in an .npz.

    python calibration/wikitext2_valid.py --tokenizer models/out/smollm2-135m [--sequences 128] [--length 128]
        [--windows spread|head]

Windows are spread evenly over the whole split (default, as `--calib valid.txt` does), or with
``--windows head`` the leading tokens back to back (how calibration sets were cut before; a few articles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from onnxdepth.calibration import WINDOW_LAYOUTS, calibration_tokens

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory with the model's tokenizer")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--windows", choices=WINDOW_LAYOUTS, default="spread")
    parser.add_argument("--out-dir", type=Path, default=Path("calibration/out"))
    args = parser.parse_args()
    if not DATA.exists():
        print(f"error: {DATA} not found (the shared data folder sits beside the project)", file=sys.stderr)
        return 1
    # calibration_tokens reads the tokenizer beside the model path it is given.
    tokens = calibration_tokens(str(DATA), args.tokenizer / "model.onnx", n_seq=args.sequences, seq_len=args.length,
                                windows=args.windows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"wikitext2-valid-{args.windows}-{len(tokens)}x{args.length}.npz"
    np.savez_compressed(out, input_ids=tokens)
    print(f"{out}: {tokens.shape[0]} sequences x {tokens.shape[1]} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
