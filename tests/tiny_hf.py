"""Tiny random Hugging Face models for the export / transformer tests (needs torch + transformers).

Builders save with ``save_pretrained`` into a directory and return it; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def llama_config(*, vocab: int = 128, hidden: int = 64, layers: int = 3, heads: int = 4, kv_heads: int = 2,
                 inter: int = 128, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=inter, vocab_size=vocab,
                       max_position_embeddings=128, **extra)


def save_tiny_llama(path: Path, *, seed: int = 0, norm_noise: float = 0.0, **config) -> Path:
    """A tiny random LlamaForCausalLM (no tokenizer: optimum does not need one).

    NORM_NOISE > 0 draws the RMSNorm weights as 1 + NORM_NOISE * N(0, 1) instead of all ones, so that
    each norm is a distinct, non-trivial parameter (identical initializers are shared by the exporter).
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**config)).eval()
    if norm_noise:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.copy_(1.0 + norm_noise * torch.randn_like(param))
    model.save_pretrained(path)
    return path


def save_tiny_bert(path: Path, *, seed: int = 0, vocab: int = 128, hidden: int = 32, layers: int = 2,
                   heads: int = 2, inter: int = 64, positions: int = 64) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=positions)
    torch.manual_seed(seed)
    BertModel(cfg).eval().save_pretrained(path)
    return path


def save_tiny_gpt2(path: Path, *, seed: int = 0, vocab: int = 128, hidden: int = 64, layers: int = 4,
                   heads: int = 4) -> Path:
    """A tiny random GPT2LMHeadModel: fused QKV (one c_attn projection split three ways), Conv1D-style
    Gemms on flattened rows."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=layers, n_head=heads)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return path


def save_tiny_phi(path: Path, *, seed: int = 0, vocab: int = 128, hidden: int = 64, layers: int = 4,
                  heads: int = 4) -> Path:
    """A tiny random PhiForCausalLM (the Phi-2 layout): parallel attention and MLP off one LayerNorm, partial
    rotary, GELU MLP with biases."""
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    cfg = PhiConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, max_position_embeddings=128, partial_rotary_factor=0.5)
    torch.manual_seed(seed)
    PhiForCausalLM(cfg).eval().save_pretrained(path)
    return path


def save_tiny_falcon(path: Path, *, seed: int = 0, vocab: int = 128, hidden: int = 64, layers: int = 4,
                     heads: int = 4) -> Path:
    """A tiny random FalconForCausalLM: one fused query_key_value projection (multi-query attention: one KV
    head), parallel attention and MLP."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    cfg = FalconConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False)
    torch.manual_seed(seed)
    FalconForCausalLM(cfg).eval().save_pretrained(path)
    return path


def decoder_feed(input_ids: np.ndarray, past: int = 0) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / position_ids of an optimum decoder export for one step."""
    input_ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
    seq = input_ids.shape[1]
    return {"input_ids": input_ids, "attention_mask": np.ones((1, past + seq), dtype=np.int64),
            "position_ids": np.arange(past, past + seq, dtype=np.int64)[None]}


#: Facts a tiny Llama learns by heart (train_fact_llama): question -> one-word answer.
CAPITALS = {"Germany": "Berlin", "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago"}


def fact_lines() -> list[str]:
    """The training text: each capital as a question and answer, and as a statement."""
    lines = []
    for country, city in CAPITALS.items():
        lines.append(f"Q: What is the capital of {country} ? A: {city} .")
        lines.append(f"The capital of {country} is {city} .")
    return lines


def save_fact_llama(path: Path, *, layers: int = 10, hidden: int = 64, steps: int = 800, seed: int = 0) -> Path:
    """A tiny LlamaForCausalLM trained (seconds on a CPU) until it answers `fact_lines()`, saved with a
    word-level tokenizer (tokenizer.json) so that optimum and ORTModelForCausalLM load it offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    lines = fact_lines()
    words = sorted({w for line in lines for w in line.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(vocab=len(vocab), hidden=hidden, layers=layers, heads=4, kv_heads=2,
                                          inter=2 * hidden, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    rows = [[1, *tokenizer(line)["input_ids"], 2] for line in lines]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])  # right-padded with </s>
    labels = ids.clone()
    for row, r in zip(labels, rows):
        row[len(r):] = -100  # no loss on padding
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
