"""Small ONNX model builders for the onnxdepth test-suite.

Every builder returns a self-contained ``onnx.ModelProto`` that:

* uses opset 17 and ir_version 8 (loadable by onnxruntime),
* is float32 with fully static shapes (value_info is filled by shape inference),
* has a single graph input ``x`` and output(s) named ``y`` (or ``y0``, ``y1``),
* stores every weight as an initializer, drawn from ``np.random.default_rng(seed)``
  with He-style scaling so activations stay finite and of reasonable magnitude.

Node names are set (unique, descriptive) but no test should rely on them.

``FAMILIES`` maps a family key to its zero-argument builder; ``random_inputs`` and
``run`` are helpers to feed a model and execute it with onnxruntime on CPU.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

__all__ = [
    "FAMILIES",
    "EXPECTED_LAYER_COUNTS",
    "build_identity_layer",
    "build_identity_matmul",
    "random_inputs",
    "run",
]


class _GraphBuilder:
    """Tiny helper accumulating nodes and initializers with unique names."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    # -- naming / constants -------------------------------------------------
    def _uid(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, array: np.ndarray, prefix: str = "const") -> str:
        name = self._uid(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        n_out: int = 1,
        out: str | Sequence[str] | None = None,
        **attrs: object,
    ) -> list[str]:
        name = self._uid(op.lower())
        if out is None:
            outputs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        elif isinstance(out, str):
            outputs = [out]
        else:
            outputs = list(out)
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, **attrs))
        return outputs

    def op(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: object) -> str:
        return self.node(op, inputs, out=out, **attrs)[0]

    # -- layers ---------------------------------------------------------------
    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        std = math.sqrt(2.0 / fan_in)
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def small_bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
        out: str | None = None,
        scale: float = 1.0,
    ) -> str:
        pad = k // 2
        fan_in = (cin // group) * k * k
        w = self.const(scale * self.he((cout, cin // group, k, k), fan_in), "conv_w")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.small_bias(cout), "conv_b"))
        return self.op(
            "Conv",
            inputs,
            out=out,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
            dilations=[1, 1],
            group=group,
        )

    def matmul_bias(self, x: str, cin: int, cout: int, out: str | None = None) -> str:
        w = self.const(self.he((cin, cout), cin), "mm_w")
        h = self.op("MatMul", [x, w])
        b = self.const(self.small_bias(cout), "mm_b")
        return self.op("Add", [h, b], out=out)

    def gemm(self, x: str, cin: int, cout: int, out: str | None = None) -> str:
        w = self.const(self.he((cout, cin), cin), "gemm_w")  # transB=1 layout [N, K]
        c = self.const(self.small_bias(cout), "gemm_b")
        return self.op("Gemm", [x, w, c], out=out, alpha=1.0, beta=1.0, transA=0, transB=1)

    def batchnorm(self, x: str, c: int) -> str:
        scale = self.const((1.0 + 0.1 * self.rng.standard_normal(c)).astype(np.float32), "bn_scale")
        beta = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32), "bn_bias")
        mean = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32), "bn_mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "bn_var")
        return self.op("BatchNormalization", [x, scale, beta, mean, var], epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def silu(self, x: str, out: str | None = None) -> str:
        s = self.op("Sigmoid", [x])
        return self.op("Mul", [x, s], out=out)

    def gelu(self, x: str, out: str | None = None) -> str:
        inv_sqrt2 = self.const(np.array(1.0 / math.sqrt(2.0), np.float32), "gelu_inv_sqrt2")
        one = self.const(np.array(1.0, np.float32), "gelu_one")
        half = self.const(np.array(0.5, np.float32), "gelu_half")
        d = self.op("Mul", [x, inv_sqrt2])
        e = self.op("Erf", [d])
        a = self.op("Add", [e, one])
        m = self.op("Mul", [x, a])
        return self.op("Mul", [m, half], out=out)

    # -- finalize -------------------------------------------------------------
    def build(
        self,
        input_shape: Sequence[int],
        outputs: Sequence[str],
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="onnxdepth-tests",
        )
        model.ir_version = IR_VERSION
        # Fill value_info and static output shapes.
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        _assert_static(model)
        return model


def _assert_static(model: onnx.ModelProto) -> None:
    """Ensure every graph output / value_info has a fully static shape."""
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            raise AssertionError(f"{vi.name}: no shape inferred")
        for d in tt.shape.dim:
            if not d.HasField("dim_value"):
                raise AssertionError(f"{vi.name}: non-static dim {d}")


# ---------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------


def build_mlp(seed: int = 0) -> onnx.ModelProto:
    """MLP: MatMul+Add+Relu stack 16->32->24->24->10 with one Gemm (transB=1) layer."""
    g = _GraphBuilder("mlp", seed)
    h = g.relu(g.matmul_bias("x", 16, 32))
    h = g.relu(g.gemm(h, 32, 24))
    h = g.relu(g.matmul_bias(h, 24, 24))
    g.matmul_bias(h, 24, 10, out="y")
    return g.build([2, 16], ["y"])


def build_cnn_channels(seed: int = 0) -> onnx.ModelProto:
    """Plain conv chain 3->8->16(stride 2)->16->8 (+Relu), 1x1 head to 4."""
    g = _GraphBuilder("cnn_channels", seed)
    h = g.relu(g.conv("x", 3, 8))
    h = g.relu(g.conv(h, 8, 16, stride=2))  # 16x16 -> 8x8
    h = g.relu(g.conv(h, 16, 16))
    h = g.relu(g.conv(h, 16, 8))
    g.conv(h, 8, 4, k=1, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_residual(seed: int = 0) -> onnx.ModelProto:
    """Stem 3->8, two 8-ch residual blocks, one 8->12->8 residual block, 1x1 head."""
    g = _GraphBuilder("residual", seed)
    h = g.conv("x", 3, 8)
    # The last conv of each residual branch is down-scaled so the sum stays O(1).
    for _ in range(2):
        r = g.conv(g.relu(g.conv(h, 8, 8)), 8, 8, scale=0.5)
        h = g.op("Add", [h, r])
    r = g.conv(g.relu(g.conv(h, 8, 12)), 12, 8, scale=0.5)
    h = g.op("Add", [h, r])
    g.conv(h, 8, 4, k=1, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_concat(seed: int = 0) -> onnx.ModelProto:
    """Stem 3->8, branches 8->6 and 8->10, Concat(axis 1)=16, conv 16->8, head 8->4."""
    g = _GraphBuilder("concat", seed)
    s = g.relu(g.conv("x", 3, 8))
    a = g.relu(g.conv(s, 8, 6))
    b = g.relu(g.conv(s, 8, 10))
    c = g.op("Concat", [a, b], axis=1)
    h = g.relu(g.conv(c, 16, 8))
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_c2f_split(seed: int = 0) -> onnx.ModelProto:
    """YOLOv8 C2f-like: 1x1 conv 3->16, Split [8,8], bottleneck, Concat 24, 1x1 24->16, head."""
    g = _GraphBuilder("c2f_split", seed)
    h = g.silu(g.conv("x", 3, 16, k=1))
    split = g.const(np.array([8, 8], np.int64), "split_sizes")
    a, b = g.node("Split", [h, split], n_out=2, axis=1)
    m = g.silu(g.conv(b, 8, 8))
    m = g.silu(g.conv(m, 8, 8))
    bo = g.op("Add", [b, m])
    c = g.op("Concat", [a, b, bo], axis=1)
    h = g.silu(g.conv(c, 24, 16, k=1))
    g.conv(h, 16, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_depthwise(seed: int = 0) -> onnx.ModelProto:
    """Conv 3->8, depthwise 3x3 (group=8), Relu, pointwise 8->12, Relu, head 12->4."""
    g = _GraphBuilder("depthwise", seed)
    h = g.relu(g.conv("x", 3, 8))
    h = g.relu(g.conv(h, 8, 8, group=8))
    h = g.relu(g.conv(h, 8, 12, k=1))
    g.conv(h, 12, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_sppf(seed: int = 0) -> onnx.ModelProto:
    """YOLO SPPF: 1x1 conv 3->8, three chained MaxPool(5,s1,p2), Concat 32, 1x1 32->8, head."""
    g = _GraphBuilder("sppf", seed)
    h = g.silu(g.conv("x", 3, 8, k=1))
    pool = dict(kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    m1 = g.op("MaxPool", [h], **pool)
    m2 = g.op("MaxPool", [m1], **pool)
    m3 = g.op("MaxPool", [m2], **pool)
    c = g.op("Concat", [h, m1, m2, m3], axis=1)
    h = g.silu(g.conv(c, 32, 8, k=1))
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_upsample_concat(seed: int = 0) -> onnx.ModelProto:
    """Stem 3->8 @16x16, s2 conv 8->12, conv 12->12 @8x8, Resize x2, Concat 20, conv 20->8, head."""
    g = _GraphBuilder("upsample_concat", seed)
    s = g.relu(g.conv("x", 3, 8))
    h = g.relu(g.conv(s, 8, 12, stride=2))
    h = g.relu(g.conv(h, 12, 12))
    scales = g.const(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "resize_scales")
    u = g.op("Resize", [h, "", scales], mode="nearest")
    c = g.op("Concat", [u, s], axis=1)  # 12 + 8 = 20
    h = g.relu(g.conv(c, 20, 8))
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_batchnorm(seed: int = 0) -> onnx.ModelProto:
    """Conv(no bias)->BatchNorm->Relu blocks 3->8->16->16, head 16->4."""
    g = _GraphBuilder("batchnorm", seed)
    h = "x"
    for cin, cout in [(3, 8), (8, 16), (16, 16)]:
        h = g.relu(g.batchnorm(g.conv(h, cin, cout, bias=False), cout))
    g.conv(h, 16, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_bias(seed: int = 0) -> onnx.ModelProto:
    """Biased convs 3->8->8->12 + LeakyRelu, GlobalAveragePool, Flatten, Gemm 12->5."""
    g = _GraphBuilder("bias", seed)
    h = "x"
    for cin, cout in [(3, 8), (8, 8), (8, 12)]:
        h = g.op("LeakyRelu", [g.conv(h, cin, cout, bias=True)], alpha=0.1)
    h = g.op("GlobalAveragePool", [h])
    h = g.op("Flatten", [h], axis=1)
    g.gemm(h, 12, 5, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_grouped(seed: int = 0) -> onnx.ModelProto:
    """Conv 3->8, grouped conv 8->8 (group=2), Relu, head 8->4."""
    g = _GraphBuilder("grouped", seed)
    h = g.relu(g.conv("x", 3, 8))
    h = g.relu(g.conv(h, 8, 8, group=2))
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_silu_gelu(seed: int = 0) -> onnx.ModelProto:
    """Conv 3->8 + SiLU (Mul/Sigmoid), conv 8->8 + GELU (Erf form), head 8->4."""
    g = _GraphBuilder("silu_gelu", seed)
    h = g.silu(g.conv("x", 3, 8))
    h = g.gelu(g.conv(h, 8, 8))
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


# ---------------------------------------------------------------------------
# Exact-identity layers (for "already identity" detection)
# ---------------------------------------------------------------------------


def build_identity_layer(seed: int = 0) -> onnx.ModelProto:
    """Conv 3->8 + Relu, a 1x1 Conv 8->8 with EXACT identity weight and zero bias, head 8->4."""
    g = _GraphBuilder("identity_layer", seed)
    h = g.relu(g.conv("x", 3, 8))
    w = np.zeros((8, 8, 1, 1), np.float32)
    w[np.arange(8), np.arange(8), 0, 0] = 1.0
    wn = g.const(w, "ident_w")
    bn = g.const(np.zeros(8, np.float32), "ident_b")
    h = g.op("Conv", [h, wn, bn], kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0],
             dilations=[1, 1], group=1)
    g.conv(h, 8, 4, out="y")
    return g.build([1, 3, 16, 16], ["y"])


def build_identity_matmul(seed: int = 0) -> onnx.ModelProto:
    """MLP: MatMul 16->16 + Relu, MatMul with EXACT identity 16x16 weight, MatMul 16->10."""
    g = _GraphBuilder("identity_matmul", seed)
    w0 = g.const(g.he((16, 16), 16), "mm_w")
    h = g.relu(g.op("MatMul", ["x", w0]))
    h = g.op("MatMul", [h, g.const(np.eye(16, dtype=np.float32), "ident_w")])
    w2 = g.const(g.he((16, 10), 16), "mm_w")
    g.op("MatMul", [h, w2], out="y")
    return g.build([2, 16], ["y"])


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

FAMILIES: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": build_mlp,
    "cnn_channels": build_cnn_channels,
    "residual": build_residual,
    "concat": build_concat,
    "c2f_split": build_c2f_split,
    "depthwise": build_depthwise,
    "sppf": build_sppf,
    "upsample_concat": build_upsample_concat,
    "batchnorm": build_batchnorm,
    "bias": build_bias,
    "grouped": build_grouped,
    "silu_gelu": build_silu_gelu,
}

#: Number of Conv + MatMul + Gemm nodes in each family (and identity models).
EXPECTED_LAYER_COUNTS: dict[str, int] = {
    "mlp": 4,  # 3 MatMul + 1 Gemm
    "cnn_channels": 5,
    "residual": 8,
    "concat": 5,
    "c2f_split": 5,
    "depthwise": 4,
    "sppf": 3,
    "upsample_concat": 5,
    "batchnorm": 4,
    "bias": 4,  # 3 Conv + 1 Gemm
    "grouped": 3,
    "silu_gelu": 3,
    "identity_layer": 3,
    "identity_matmul": 3,
}

LAYER_OPS = ("Conv", "MatMul", "Gemm")


def count_layers(model: onnx.ModelProto) -> int:
    """Number of Conv / MatMul / Gemm nodes in ``model``."""
    return sum(n.op_type in LAYER_OPS for n in model.graph.node)


# ---------------------------------------------------------------------------
# Execution helpers
# ---------------------------------------------------------------------------


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 feeds for every (non-initializer) graph input."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = []
        for d in dims:
            if not d.HasField("dim_value"):
                raise ValueError(f"input {inp.name!r} has non-static dim {d}")
            shape.append(d.dim_value)
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` with onnxruntime (CPU) and return all outputs in graph order."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)


if __name__ == "__main__":
    all_builders: dict[str, Callable[[], onnx.ModelProto]] = {
        **FAMILIES,
        "identity_layer": build_identity_layer,
        "identity_matmul": build_identity_matmul,
    }
    for key, fn in all_builders.items():
        m = fn()
        onnx.checker.check_model(m, full_check=True)
        outs = run(m, random_inputs(m))
        n_layers = count_layers(m)
        assert n_layers == EXPECTED_LAYER_COUNTS[key], (key, n_layers)
        for o in outs:
            assert np.all(np.isfinite(o)), key
        # Builders are deterministic for a given seed.
        assert fn().SerializeToString() == m.SerializeToString(), key
        stds = ", ".join(f"std={float(o.std()):.3f}" for o in outs)
        print(f"{key:16s} layers={n_layers}  outputs={[o.shape for o in outs]}  {stds}")
    print("all OK")
