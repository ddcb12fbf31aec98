"""The real small models every fuzz case starts from: a tiny MLP, a tiny conv net with residuals (both from
tests/graphs.py) and a tiny attention-ish block (built here), each valid, prunable and under 20 KB."""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx

import graphs

__all__ = ["SEEDS", "build_attention", "seed_model"]


def build_attention(seed: int = 0) -> onnx.ModelProto:
    """One pre-norm transformer block on x [1, 8, 16]: single-head attention (Q/K/V/O MatMuls, scaled
    softmax), residual, LayerNormalization, a 16->32->16 MLP, residual."""
    g = graphs._GraphBuilder("attention", seed)
    width, hidden = 16, 32
    q, k, v = (g.op("MatMul", ["x", g.const(g.he((width, width), width), f"w{n}")]) for n in "qkv")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    scale = g.const(np.array(1.0 / math.sqrt(width), np.float32), "scale")
    probs = g.op("Softmax", [g.op("Mul", [scores, scale])], axis=-1)
    attended = g.op("MatMul", [g.op("MatMul", [probs, v]), g.const(g.he((width, width), width), "wo")])
    h = g.op("Add", ["x", attended])
    gamma = g.const(np.ones(width, np.float32), "ln_gamma")
    beta = g.const(np.zeros(width, np.float32), "ln_beta")
    normed = g.op("LayerNormalization", [h, gamma, beta], axis=-1, epsilon=1e-5)
    up = g.relu(g.matmul_bias(normed, width, hidden))
    down = g.matmul_bias(up, hidden, width)
    g.op("Add", [h, down], out="y")
    return g.build([1, 8, width], ["y"])


SEEDS = {"mlp": graphs.build_mlp, "resconv": graphs.build_residual, "attn": build_attention}


@functools.lru_cache(maxsize=None)
def _serialized(name: str) -> bytes:
    return SEEDS[name]().SerializeToString()


def seed_model(name: str) -> onnx.ModelProto:
    """A fresh copy of seed NAME (built once per process; callers may mutate the copy)."""
    model = onnx.ModelProto()
    model.ParseFromString(_serialized(name))
    return model


def seed_bytes(name: str) -> bytes:
    return _serialized(name)
