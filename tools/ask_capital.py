"""Load with-past SmolLM2 ONNX models (pruned, healed) in optimum's ORTModelForCausalLM and ask the demo's
question through the chat template, greedy.

    python tools/ask_capital.py artifacts/heal/p30.onnx artifacts/heal/full-wiki.onnx

Each model is copied into a folder of its own with the unpruned export's config and tokenizer files (what
ORTModelForCausalLM reads beside model.onnx).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "models" / "out" / "smollm2-135m-with-past"
QUESTION = "What is the capital of Germany?"


def answer(model: Path) -> str:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for file in SOURCE.iterdir():
            if file.is_file() and file.suffix != ".onnx" and not file.name.endswith(".data"):
                shutil.copy(file, folder)
        shutil.copy(model, Path(folder) / "model.onnx")
        for data in model.parent.glob(model.name + "*.data"):
            shutil.copy(data, folder)  # an external-data model keeps its data file name
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ort_model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True)
        chat = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(chat, return_tensors="pt")
        out = ort_model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def main() -> None:
    for path in [SOURCE / "model.onnx", *map(Path, sys.argv[1:])]:
        print(f"{path}: {QUESTION!r} -> {answer(path)!r}", flush=True)


if __name__ == "__main__":
    main()
