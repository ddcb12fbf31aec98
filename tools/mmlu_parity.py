"""MMLU parity: ONNX Runtime (onnxdepth eval --task multiple-choice) against transformers on SmolLM2-135M.

    python tools/mmlu_parity.py [--n 100] [--shots 0] [--onnx /tmp/m/smol_nopast/model.onnx]
        [--hf /tmp/m/smollm2_hf] [--data ../shared/data/mmlu/val] [--threads 2]

Both sides score the first N questions (subjects sorted, rows in file order) with the same harness
prompts and (context, continuation) token split; ONNX Runtime goes through ``evaluate_multiple_choice``
(padded batches, single-token letters scored from one pass), transformers runs every ``context +
continuation`` input on its own (identical inputs once) in float32 with a float64 log-softmax. Prints
letter and cloze accuracy of both, the max abs difference of the per-choice log-likelihoods, disagreeing
predictions and the time each side took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from onnxdepth.eval.multiple_choice import (  # noqa: E402
    _default_dev,
    _predict,
    _select_shots,
    _shots_by_subject,
    build_context,
    continuations,
    encode_pair,
    evaluate_multiple_choice,
    load_questions,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmlu" / "val"
STYLES = ("letter", "cloze")


def torch_loglikelihoods(hf_dir: Path, questions, pool, shots: int, threads: int) -> list[dict]:
    """Per question and style: the four continuation log-likelihoods from transformers, one sequence a run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    out = []
    for q in questions:
        examples = _select_shots(pool.get(q.subject, []), q, shots) if shots else []
        item = {}
        for style in STYLES:
            context = build_context(q, examples, style)
            lls, runs = [], {}
            for continuation in continuations(q, style):
                ctx, cont = encode_pair(tokenizer, context, continuation)
                inp = tuple(ctx + cont[:-1])  # the harness input; single-token letters all share it
                if inp not in runs:
                    with torch.no_grad():
                        runs[inp] = model(torch.tensor([inp]), use_cache=False).logits[0]
                # the last len(cont) positions predict the continuation tokens
                logp = torch.log_softmax(runs[inp][len(inp) - len(cont):].double(), dim=-1)
                lls.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
            item[f"{style}_ll"], item[f"{style}_pred"] = lls, _predict(lls, q, style)
        out.append(item)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--onnx", type=Path, default=Path("/tmp/m/smol_nopast/model.onnx"))
    parser.add_argument("--hf", type=Path, default=Path("/tmp/m/smollm2_hf"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    questions = load_questions(args.data, args.n)
    pool = {}
    if args.shots:
        pool = _shots_by_subject(_default_dev(args.data), {q.subject for q in questions}, args.shots)

    t0 = time.perf_counter()
    ort_res = evaluate_multiple_choice(args.onnx, args.data, shots=args.shots, limit=args.n, threads=args.threads,
                                       progress=sys.stderr.isatty(), details=True)
    ort_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = torch_loglikelihoods(args.hf, questions, pool, args.shots, args.threads)
    torch_s = time.perf_counter() - t0

    n = len(questions)
    print(f"MMLU val, first {n} questions, {args.shots}-shot ({len({q.subject for q in questions})} subjects)")
    for style in STYLES:
        ort_acc = ort_res[f"{style}_accuracy"]
        ref_acc = sum(item[f"{style}_pred"] == q.answer for item, q in zip(ref, questions)) / n
        diff = max(float(np.max(np.abs(np.subtract(a[f"{style}_ll"], b[f"{style}_ll"]))))
                   for a, b in zip(ort_res["items"], ref))
        disagree = sum(a[f"{style}_pred"] != b[f"{style}_pred"] for a, b in zip(ort_res["items"], ref))
        print(f"{style:6s}  onnxruntime acc {ort_acc:.3f}  transformers acc {ref_acc:.3f}  "
              f"max |dLL| {diff:.2e}  disagreeing predictions {disagree}")
    print(f"time: onnxruntime {ort_s:.1f} s (incl. session load), transformers {torch_s:.1f} s, "
          f"{args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
