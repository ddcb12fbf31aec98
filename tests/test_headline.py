"""The headline command on a small model: a plain `onnxdepth prune --ratio 0.2 --calib FILE` on a with-past
export, loaded in optimum's ORTModelForCausalLM, still answers the capital-of-Germany question.

The model is a tiny Llama trained here in seconds until it knows ten capitals (`tiny_hf.save_fact_llama`),
so the check is about what pruning keeps of a model that knows something, not about random weights.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

pytest.importorskip("optimum.onnxruntime")
pytest.importorskip("torch")

from onnxdepth.export.hf import export_hf  # noqa: E402
from tiny_hf import CAPITALS, fact_lines, save_fact_llama  # noqa: E402

PROMPT = "Q: What is the capital of {} ? A:"


@pytest.fixture(scope="module")
def fact_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("headline")
    directory = save_fact_llama(root / "llama")
    export = export_hf(directory, root / "with-past", task="text-generation-with-past")
    # Calibration text: the facts, shuffled, enough for the default 32 + 8 windows of 128 tokens.
    lines = fact_lines() * 120
    random.Random(0).shuffle(lines)
    calib = root / "calib.txt"
    calib.write_text("\n".join(lines) + "\n")
    return export, calib


def _answers(model_dir) -> dict[str, str]:
    """Greedy answers of the with-past model in MODEL_DIR to every question, through ORTModelForCausalLM."""
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = ORTModelForCausalLM.from_pretrained(model_dir, use_cache=True)
    answers = {}
    for country in CAPITALS:
        ids = tokenizer("<s> " + PROMPT.format(country), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answers[country] = tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip()
    return answers


def test_the_default_prune_at_0_2_still_answers(cli, fact_export, tmp_path):
    export, calib = fact_export
    assert _answers(export.parent) == CAPITALS  # the unpruned model knows every capital
    out_dir = tmp_path / "pruned"
    out_dir.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (export.parent / name).exists():
            shutil.copy(export.parent / name, out_dir / name)
    code, _, err = cli("prune", export, out_dir / "model.onnx", "--ratio", "0.2", "--calib", calib)
    assert code == 0, err
    plan = json.loads((out_dir / "model.plan.json").read_text())
    assert (plan["importance"], plan["granularity"], plan["compensate"]) == ("angular", "block", "lstsq")
    assert plan["reduction"] >= 0.2 and any(f["folded"] for f in plan["compensation"]["fits"])
    assert plan["removed_graph_io"]  # whole layers went, with their cache inputs and outputs
    answers = _answers(out_dir)
    assert answers["Germany"] == "Berlin", answers
    assert sum(answers[c] == city for c, city in CAPITALS.items()) >= 9, answers
