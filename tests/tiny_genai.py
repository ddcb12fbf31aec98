"""A tiny decoder in ONNX Runtime GenAI's builder layout, from the weights of a tiny Hugging Face Llama.

The layout `onnxruntime_genai.models.builder` writes (checked against its SmolLM2 build): per layer a
SkipSimplifiedLayerNormalization carrying the residual stream (output 3) and the norm (output 0), one packed
QKV MatMul into GroupQueryAttention (rotary inside, caches `past_key_values.%d.key` -> `present.%d.key`,
seqlens from the attention mask), the O projection, and a SiLU-gated MLP; a `genai_config.json` beside it.
The builder itself needs transformers 5 (tools/genai_env.sh), so CI builds this stand-in with onnx.helper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(hf_dir: Path) -> tuple[dict[str, np.ndarray], object]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}, model.config


def build_genai_llama(hf_dir: Path, out_dir: Path, *, max_length: int = 128) -> Path:
    """OUT_DIR/model.onnx (+ genai_config.json) computing HF_DIR's Llama; returns the model path."""
    w, cfg = _weights(hf_dir)
    hidden, heads, kv_heads = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    head, layers, eps = hidden // heads, cfg.num_hidden_layers, float(cfg.rms_norm_eps)
    nodes, inits = [], []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=value.dtype), name))
        return name

    one = init("const_one", np.array([1], dtype=np.int64))
    # seqlens_k [batch] = tokens seen - 1; total_sequence_length = the mask's length (both int32).
    nodes += [helper.make_node("ReduceSum", ["attention_mask", one], ["mask_sum"], keepdims=0, name="mask/sum"),
              helper.make_node("Sub", ["mask_sum", one], ["mask_sub"], name="mask/sub"),
              helper.make_node("Cast", ["mask_sub"], ["seqlens_k"], to=TensorProto.INT32, name="mask/cast"),
              helper.make_node("Shape", ["attention_mask"], ["mask_shape"], name="mask/shape"),
              helper.make_node("Gather", ["mask_shape", init("const_axis1", np.array(1, dtype=np.int64))],
                               ["mask_len"], axis=0, name="mask/len"),
              helper.make_node("Cast", ["mask_len"], ["total_len"], to=TensorProto.INT32, name="mask/len_cast")]
    # Rotary caches [max_length, head / 2]: cos / sin of position * inverse frequency (non-interleaved halves).
    inv_freq = 1.0 / (float(getattr(cfg, "rope_theta", 10000.0)) ** (np.arange(0, head, 2) / head))
    angles = np.arange(max_length)[:, None] * inv_freq[None]
    cos, sin = init("cos_cache", np.cos(angles).astype(np.float32)), init("sin_cache", np.sin(angles).astype(np.float32))
    # The LM head's [hidden, vocab] weight; tied embeddings gather from its transpose, as the builder does.
    lm_head = init("lm_head.weight", w.get("lm_head.weight", w["model.embed_tokens.weight"]).T)
    if cfg.tie_word_embeddings:
        nodes.append(helper.make_node("Transpose", [lm_head], ["embed_table"], perm=[1, 0],
                                      name="/model/embed_tokens/Transpose"))
        table = "embed_table"
    else:
        table = init("embed.weight", w["model.embed_tokens.weight"])
    nodes.append(helper.make_node("Gather", [table, "input_ids"], ["embedded"], name="/model/embed_tokens/Gather"))
    stream, pending = "embedded", None  # pending: the sublayer output not yet added to the stream
    graph_in, graph_out = [], []
    for i in range(layers):
        p = f"model.layers.{i}."
        normed = _norm(nodes, init, f"/model/layers.{i}/input_layernorm", stream, pending,
                       w[p + "input_layernorm.weight"], eps)
        stream = normed[1]
        qkv = np.concatenate([w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"],
                              w[p + "self_attn.v_proj.weight"]], axis=0).T  # [hidden, (heads + 2 kv) * head]
        nodes.append(helper.make_node("MatMul", [normed[0], init(p + "qkv.weight", qkv)], [f"qkv{i}"],
                                      name=f"/model/layers.{i}/attn/qkv_proj/MatMul"))
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        nodes.append(helper.make_node(
            "GroupQueryAttention", [f"qkv{i}", "", "", past_k, past_v, "seqlens_k", "total_len", cos, sin],
            [f"attn{i}", present_k, present_v], domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads,
            do_rotary=1, rotary_interleaved=0, scale=float(head ** -0.5),
            name=f"/model/layers.{i}/attn/GroupQueryAttention"))
        nodes.append(helper.make_node("MatMul", [f"attn{i}", init(p + "o.weight", w[p + "self_attn.o_proj.weight"].T)],
                                      [f"o{i}"], name=f"/model/layers.{i}/attn/o_proj/MatMul"))
        for name in (past_k, past_v):
            graph_in.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                          ["batch_size", kv_heads, "past_sequence_length", "kv_cache_dim"]))
        for name in (present_k, present_v):
            graph_out.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                           ["batch_size", kv_heads, "total_sequence_length", "kv_cache_dim"]))
        normed = _norm(nodes, init, f"/model/layers.{i}/post_attention_layernorm", stream, f"o{i}",
                       w[p + "post_attention_layernorm.weight"], eps)
        stream = normed[1]
        m = f"/model/layers.{i}/mlp"
        nodes += [
            helper.make_node("MatMul", [normed[0], init(p + "gate.weight", w[p + "mlp.gate_proj.weight"].T)],
                             [f"gate{i}"], name=f"{m}/gate_proj/MatMul"),
            helper.make_node("MatMul", [normed[0], init(p + "up.weight", w[p + "mlp.up_proj.weight"].T)],
                             [f"up{i}"], name=f"{m}/up_proj/MatMul"),
            helper.make_node("Sigmoid", [f"gate{i}"], [f"sig{i}"], name=f"{m}/act_fn/Sigmoid"),
            helper.make_node("Mul", [f"gate{i}", f"sig{i}"], [f"silu{i}"], name=f"{m}/act_fn/Mul"),
            helper.make_node("Mul", [f"silu{i}", f"up{i}"], [f"prod{i}"], name=f"{m}/Mul"),
            helper.make_node("MatMul", [f"prod{i}", init(p + "down.weight", w[p + "mlp.down_proj.weight"].T)],
                             [f"down{i}"], name=f"{m}/down_proj/MatMul")]
        pending = f"down{i}"
    normed = _norm(nodes, init, "/model/norm", stream, pending, w["model.norm.weight"], eps, keep_sum=False)
    nodes.append(helper.make_node("MatMul", [normed[0], lm_head], ["logits"], name="/lm_head/MatMul"))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
              *graph_in]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size]),
               *graph_out]
    graph = helper.make_graph(nodes, "genai_llama", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "genai_config.json").write_text(json.dumps(_config(cfg, head, max_length), indent=4))
    return out_dir / "model.onnx"


def _norm(nodes, init, name: str, stream: str, pending: str | None, gamma: np.ndarray, eps: float,
          keep_sum: bool = True) -> tuple[str, str]:
    """(normed, new stream): a SimplifiedLayerNormalization of STREAM, or, with PENDING to add first, one
    SkipSimplifiedLayerNormalization (output 3 the sum, the stream from here on)."""
    gamma_name = init(f"{name}.weight", gamma.astype(np.float32))
    if pending is None:
        nodes.append(helper.make_node("SimplifiedLayerNormalization", [stream, gamma_name], [f"{name}/out"],
                                      axis=-1, epsilon=eps, stash_type=1, name=f"{name}/LayerNorm"))
        return f"{name}/out", stream
    total = f"{name}/output_3" if keep_sum else ""
    nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [stream, pending, gamma_name],
                                  [f"{name}/out", "", "", total], domain="com.microsoft", epsilon=eps,
                                  name=f"{name}/SkipLayerNorm"))
    return f"{name}/out", total


def _config(cfg, head: int, max_length: int) -> dict:
    return {"model": {
        "bos_token_id": 1, "context_length": max_length, "eos_token_id": [2], "pad_token_id": 0, "type": "llama",
        "vocab_size": cfg.vocab_size,
        "decoder": {"filename": "model.onnx", "head_size": head, "hidden_size": cfg.hidden_size,
                    "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
                    "num_key_value_heads": cfg.num_key_value_heads,
                    "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                    "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                               "past_key_names": "past_key_values.%d.key",
                               "past_value_names": "past_key_values.%d.value"},
                    "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                "present_value_names": "present.%d.value"}}},
        "search": {"do_sample": False, "max_length": max_length, "num_beams": 1, "past_present_share_buffer": True}}


def quantize_int4(src: Path, out_dir: Path, *, block: int = 16, accuracy_level: int = 0) -> Path:
    """SRC with every MatMul of a constant [K, N] weight as a symmetric 4-bit MatMulNBits (blocks of BLOCK rows),
    quantized by ONNX Runtime's own kernel, as its MatMulNBits quantizer does; genai_config.json copied."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        rows, cols = w.shape
        blocks = -(-rows // block)
        codes = np.zeros((cols, blocks, block // 2), dtype=np.uint8)
        scales = np.zeros((cols, blocks), dtype=np.float32)
        zero_points = np.zeros((cols, (blocks + 1) // 2), dtype=np.uint8)
        quantize_matmul_4bits(codes, np.ascontiguousarray(w), scales, zero_points, block, cols, rows, True)
        model.graph.initializer.extend([numpy_helper.from_array(codes, weight.name + "_Q4"),
                                        numpy_helper.from_array(scales, weight.name + "_scales")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], weight.name + "_Q4", weight.name + "_scales"],
                                      list(node.output), name=node.name + "_Q4", domain="com.microsoft", K=rows,
                                      N=cols, bits=4, block_size=block, accuracy_level=accuracy_level))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "genai_config.json").write_text((src.parent / "genai_config.json").read_text())
    return out_dir / "model.onnx"
