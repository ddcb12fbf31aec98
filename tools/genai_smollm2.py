"""SmolLM2 built by ONNX Runtime GenAI's model builder (fp32 and int4), pruned by onnxdepth, generated with by
onnxruntime_genai, and the fp32 result's perplexity against the same units pruned from the optimum export.

    bash tools/genai_env.sh                      # .venv-genai: the builder and onnxruntime-genai
    .venv/bin/python models/build_smollm2.py     # the optimum export (and the HF folder from the GGUF)
    .venv/bin/python tools/genai_smollm2.py [--ratio 0.2] [--out artifacts/genai]

Prints one line per step and a summary table. The builder needs transformers 5, so it and onnxruntime_genai run
in .venv-genai; everything else in this venv. og.Tokenizer misreads this tokenizer.json (ids of -1), so the
prompt's token ids come from the Hugging Face tokenizer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENAI_PY = ROOT / ".venv-genai" / "bin" / "python"
OPTIMUM = ROOT / "models" / "out" / "smollm2-135m-with-past" / "model.onnx"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "test.txt"
PROMPT = "The capital of Germany is"

GENERATE = """
import sys, numpy as np, onnxruntime_genai as og
from transformers import AutoTokenizer
folder, prompt = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(prompt)["input_ids"]
model = og.Model(folder)
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + 12, do_sample=False)
gen = og.Generator(model, params)
gen.append_tokens(np.array(ids, dtype=np.int32))
out = []
while not gen.is_done():
    gen.generate_next_token()
    out.append(int(gen.get_next_tokens()[0]))
print(repr(tok.decode(out)))
"""


def run(cmd: list, **kwargs) -> str:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1] if done.stderr else ''}")
    return done.stdout.strip()


def onnxdepth(*args) -> str:
    return run([ROOT / ".venv" / "bin" / "onnxdepth", *args])


def perplexity(model: Path, tokenizer: Path | None = None) -> float:
    extra = ["--tokenizer", tokenizer] if tokenizer else []
    out = onnxdepth("eval", model, "--task", "perplexity", "--text", WIKITEXT, "--max-tokens", "32768", "--json",
                    *extra)
    return json.loads(out.splitlines()[-1])["perplexity"]


def build(hf_dir: Path, out: Path, precision: str) -> Path:
    if not (out / "model.onnx").is_file():
        run([GENAI_PY, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out, "-p", precision, "-e", "cpu"])
    return out / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", default="0.2")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "genai")
    args = parser.parse_args()
    if not GENAI_PY.is_file() or not OPTIMUM.is_file():
        sys.exit("needs .venv-genai (bash tools/genai_env.sh) and the optimum export (models/build_smollm2.py)")
    hf_dir = ROOT / "artifacts" / "smollm2-hf"
    if not (hf_dir / "config.json").is_file():
        from onnxdepth.export.hf import _gguf_to_hf  # the packaged GGUF de-quantized to an HF folder
        from onnxdepth.models_zoo import smollm2_gguf

        gguf = Path(smollm2_gguf())
        _gguf_to_hf(gguf, hf_dir, str(gguf))
    rows = []
    for precision in ("fp32", "int4"):
        source = build(hf_dir, args.out / precision, precision)
        pruned = args.out / f"{precision}-pruned" / "model.onnx"
        pruned.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        onnxdepth("prune", source, pruned, "--ratio", args.ratio)
        seconds = time.perf_counter() - started
        plan = json.loads(pruned.with_name("model.plan.json").read_text())
        generated = run([GENAI_PY, "-c", GENERATE, pruned.parent, PROMPT])
        after = perplexity(pruned)
        rows.append((precision, perplexity(source), plan["reduction"], seconds, after, generated))
        if precision == "fp32":
            same = args.out / "optimum-same-units" / "model.onnx"
            same.parent.mkdir(parents=True, exist_ok=True)
            onnxdepth("prune", OPTIMUM, same, "--plan", pruned.with_name("model.plan.json"))
            parity = (after, perplexity(same, OPTIMUM.parent))
    print("\n| build | unpruned ppl | removed | prune s | pruned ppl | onnxruntime_genai: " + PROMPT + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for precision, before, reduction, seconds, after, generated in rows:
        print(f"| {precision} | {before:.2f} | {reduction:.2%} | {seconds:.0f} | {after:.2f} | {generated} |")
    print(f"\nfp32 pruned (GenAI graph) ppl {parity[0]:.4f}; the same units pruned from the optimum export "
          f"{parity[1]:.4f} (difference {abs(parity[0] / parity[1] - 1):.2e})")


if __name__ == "__main__":
    main()
