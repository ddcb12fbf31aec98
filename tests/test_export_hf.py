"""onnxdepth.export.hf: tiny random Llama / BERT models (and a tiny GGUF) exported with optimum, offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("optimum.exporters.onnx")
torch = pytest.importorskip("torch")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import onnxruntime as ort  # noqa: E402

from onnxdepth.errors import ExportError, InvalidArgumentError, OutputWriteError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from tiny_hf import save_tiny_bert, save_tiny_llama  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 256, 64, 2, 4, 2, 128
SEQ = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM saved with save_pretrained (no tokenizer: optimum does not need one)."""
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama", vocab=VOCAB, hidden=HIDDEN,
                           layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, inter=INTER)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def llama_export(llama_dir, tmp_path_factory) -> Path:
    return export_hf(llama_dir, tmp_path_factory.mktemp("exp") / "tg", task="text-generation")


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _decoder_feed(seq: int = SEQ, past: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(0, VOCAB, size=(1, seq), dtype=np.int64),
        "attention_mask": np.ones((1, past + seq), dtype=np.int64),
        "position_ids": np.arange(past, past + seq, dtype=np.int64)[None],
    }


def _torch_logits(model_dir: Path, feed: dict[str, np.ndarray], **kwargs) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()}, use_cache=False)
    return out.logits.numpy()


def write_tiny_llama_gguf(path: Path) -> Path:
    """A tiny float32 llama GGUF (random weights, 256-token llama tokenizer) written with the gguf package."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTER)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    tokens = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(33, 127)] + ["\u2581"]
    tokens += [f"tok{i}" for i in range(VOCAB - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    head = HIDDEN // HEADS
    rand("token_embd.weight", VOCAB, HIDDEN)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        rand(f"blk.{i}.attn_q.weight", HEADS * head, HIDDEN)
        rand(f"blk.{i}.attn_k.weight", KV_HEADS * head, HIDDEN)
        rand(f"blk.{i}.attn_v.weight", KV_HEADS * head, HIDDEN)
        rand(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * head)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", INTER, HIDDEN)
        rand(f"blk.{i}.ffn_up.weight", INTER, HIDDEN)
        rand(f"blk.{i}.ffn_down.weight", HIDDEN, INTER)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    rand("output.weight", VOCAB, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_text_generation(llama_dir, llama_export):
    path = llama_export
    assert path.name == "model.onnx" and path.is_file()
    assert (path.parent / "config.json").is_file()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    feed = _decoder_feed()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, feed)
    assert logits.shape == (1, SEQ, VOCAB)
    np.testing.assert_allclose(logits, _torch_logits(llama_dir, feed), atol=1e-4)
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_text_generation_with_past(llama_dir, tmp_path):
    path = export_hf(llama_dir, tmp_path / "tgp", task="text-generation-with-past")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    past = sorted(n for n in inputs if n.startswith("past_key_values."))
    present = sorted(n for n in outputs if n.startswith("present."))
    assert past == [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    assert present == [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    assert _dims(inputs["past_key_values.0.key"])[1:2] == [KV_HEADS]
    past_len = 3
    feed = _decoder_feed(past=past_len)
    rng = np.random.default_rng(1)
    for name in past:
        feed[name] = rng.standard_normal((1, KV_HEADS, past_len, HIDDEN // HEADS)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    result = dict(zip(names, sess.run(None, feed)))
    assert result["logits"].shape == (1, SEQ, VOCAB)
    assert result["present.1.value"].shape == (1, KV_HEADS, past_len + SEQ, HIDDEN // HEADS)


def test_feature_extraction(bert_dir, tmp_path):
    path = export_hf(bert_dir, tmp_path / "fe", task="feature-extraction")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {i.name for i in model.graph.input} == {"input_ids", "attention_mask", "token_type_ids"}
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    feed = {
        "input_ids": np.arange(1, 1 + SEQ, dtype=np.int64)[None],
        "attention_mask": np.ones((1, SEQ), dtype=np.int64),
        "token_type_ids": np.zeros((1, SEQ), dtype=np.int64),
    }
    (hidden,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert hidden.shape == (1, SEQ, 32)


def test_gguf_source(tmp_path):
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    path = export_hf(gguf_path, tmp_path / "out", task="text-generation")
    onnx.checker.check_model(str(path))
    files = {p.name for p in path.parent.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "tokenizer.model" not in files  # transformers would copy the whole .gguf under that name
    feed = _decoder_feed()
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert logits.shape == (1, SEQ, VOCAB)
    expected = _torch_logits(gguf_path.parent, feed, gguf_file=gguf_path.name)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(path.parent))("ab").input_ids[0] == 1  # <s>


def test_existing_output_needs_overwrite(llama_dir, llama_export):
    outdir = llama_export.parent
    with pytest.raises(OutputWriteError, match="already exists"):
        export_hf(llama_dir, outdir)
    (outdir / "keep.txt").write_text("x")
    assert export_hf(llama_dir, outdir, overwrite=True) == llama_export
    assert (outdir / "keep.txt").is_file() and llama_export.is_file()
    assert not [p for p in outdir.parent.iterdir() if p.name.startswith(".")]


def test_bad_sources(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        export_hf(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export_hf(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ExportError, match=r"\.gguf"):
        export_hf(tmp_path / "w.bin", tmp_path / "o")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ExportError, match="bad magic"):
        export_hf(tmp_path / "fake.gguf", tmp_path / "o")
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 9)
    with pytest.raises(ExportError, match="cannot load GGUF") as info:
        export_hf(tmp_path / "trunc.gguf", tmp_path / "o")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "fake.gguf", "trunc.gguf", "w.bin"]


def test_bad_arguments(llama_dir, tmp_path):
    with pytest.raises(InvalidArgumentError, match="task"):
        export_hf(llama_dir, tmp_path / "o", task="image-classification")
    with pytest.raises(InvalidArgumentError, match="opset"):
        export_hf(llama_dir, tmp_path / "o", opset=0)
    with pytest.raises(OutputWriteError, match="does not exist"):
        export_hf(llama_dir, tmp_path / "no" / "such" / "o")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError, match="not a directory"):
        export_hf(llama_dir, tmp_path / "file")


def test_failed_export_leaves_nothing(bert_dir, tmp_path):
    """BertModel cannot be exported for text-generation: one-line ExportError, no OUTDIR, no temp dir."""
    with pytest.raises(ExportError, match="failed") as info:
        export_hf(bert_dir, tmp_path / "o", task="text-generation")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_optimum(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)
    with pytest.raises(ExportError, match=r"pip install 'onnxdepth\[hf\]'"):
        export_hf(llama_dir, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []
