"""Block-quantized weights (ONNX Runtime's MatMulNBits, int4 from the GenAI builder or ORT's quantizer).

The passes read a linear layer as a MatMul with a float [K, N] weight, so `dequantize_nbits` turns each
4-bit MatMulNBits into exactly that (the values its kernel computes with), remembering the quantized tensors.
On export `requantize_nbits` turns every such MatMul back into a MatMulNBits:
- its weight untouched: the original quantized tensors, bit for bit;
- sliced on output columns (N) and on whole K blocks only: the matching rows and blocks of the original
  codes, scales and zero points (nothing re-quantized);
- otherwise (input channels cut inside a block, or refitted by --compensate lstsq): quantized afresh,
  round-to-nearest per block of the same size, symmetric as the original was, by ONNX Runtime's own
  `quantize_matmul_4bits` (what its MatMulNBits quantizer calls).
The float weights (4 bytes per weight) are written to a scratch data file and mapped from there, like a float
model's external data; the records keep only the codes. So an int4 model is pruned in the memory of its float32
equivalent with external data, and needs about eight times its file size of scratch disk (TMPDIR).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .consts import const_value
from .external import external_info, folder_of, has_external, mark_folder, read_tensor
from .io import stream_tensor
from .scratch import scratch_folder

__all__ = ["NBitsWeight", "dequantize_nbits", "requantize_nbits"]

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
#: The scratch data file of a dequantized model's float weights (`dequantize_nbits`).
_SCRATCH_DATA = "dequantized.data"


@dataclass
class NBitsWeight:
    """One MatMulNBits as it was: its attributes, quantized tensors and the float weight they stand for."""

    attrs: dict
    codes: np.ndarray  # uint8 [N, blocks, block_size / 2]: two 4-bit codes a byte, the low nibble first
    scales: np.ndarray  # [N, blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(blocks / 2)] packed like the codes; None: symmetric (8)
    names: tuple[str, str, str]  # its codes', scales' and zero points' initializer names ("" for none)

    @property
    def block(self) -> int:
        return int(self.attrs["block_size"])

    @property
    def shape(self) -> tuple[int, int]:
        """The float weight's [K, N]."""
        return int(self.attrs["K"]), int(self.attrs["N"])

    def dequantized(self) -> np.ndarray:
        """The float32 [K, N] weight the codes stand for (computed again when asked: the record keeps no float
        copy, the model being pruned holds one)."""
        return _dequantize(self.codes, self.scales, self.zero_points, self.shape[0], self.block)


def _array(tensor: onnx.TensorProto, folder: str | None) -> np.ndarray:
    return np.asarray(read_tensor(tensor, folder)) if has_external(tensor) else numpy_helper.to_array(tensor)


def _unpack(packed: np.ndarray, count: int) -> np.ndarray:
    """4-bit values two a byte (low nibble first) along the last axis, the first COUNT of them."""
    low, high = packed & 0x0F, packed >> 4
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def _pack(values: np.ndarray) -> np.ndarray:
    """`_unpack`'s inverse: pairs of 4-bit values (padded with 0) into bytes along the last axis."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), values.dtype)], axis=-1)
    pairs = values.reshape(*values.shape[:-1], -1, 2).astype(np.uint8)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def dequantize_nbits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, NBitsWeight]]:
    """A copy of MODEL where each 4-bit MatMulNBits (no g_idx) is a MatMul of the same name with its float weight
    (plus an Add of its bias), and {node name: what it was}. MODEL itself is returned when it has none."""
    if not any(n.domain == MS_DOMAIN and n.op_type == "MatMulNBits" for n in model.graph.node):
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folder = folder_of(model)
    inits = {i.name: i for i in out.graph.initializer}
    # The float weights go to a scratch data file (with the model's other external tensors), never inline: the
    # passes and ORT's sessions then map them from there, as they map a float model's external data.
    scratch = scratch_folder("onnxdepth-dequantized-")
    data = open(scratch / _SCRATCH_DATA, "wb")
    records: dict[str, NBitsWeight] = {}
    nodes, dropped = [], set()
    for index, node in enumerate(out.graph.node):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (6 - len(node.input))
        if (node.domain != MS_DOMAIN or node.op_type != "MatMulNBits" or attrs.get("bits", 4) != 4
                or inputs[4] or any(name and name not in inits for name in (inputs[1], inputs[2], inputs[3]))):
            nodes.append(node)
            continue
        name = node.name or f"MatMulNBits_{index}"
        k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
        blocks = -(-k // block)  # ceil(K / block_size)
        codes = _array(inits[inputs[1]], folder).reshape(n, blocks, -1)
        scales = _array(inits[inputs[2]], folder).reshape(n, blocks)
        zero_points = _array(inits[inputs[3]], folder).reshape(n, -1) if inputs[3] else None
        records[name] = NBitsWeight(attrs, codes, scales, zero_points, tuple(inputs[1:4]))
        dropped.update(i for i in inputs[1:4] if i)
        weight_name = f"{inputs[1]}/dequantized"
        tensor = numpy_helper.from_array(_dequantize(codes, scales, zero_points, k, block), weight_name)
        stream_tensor(tensor, data, folder, _SCRATCH_DATA)  # its bytes to the file, the proto keeps a reference
        out.graph.initializer.append(tensor)
        product = f"{node.output[0]}/no_bias" if inputs[5] else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [inputs[0], weight_name], [product], name=name))
        if inputs[5]:
            nodes.append(onnx.helper.make_node("Add", [product, inputs[5]], [node.output[0]], name=f"{name}/bias"))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in out.graph.initializer if i.name not in dropped or i.name in used]
    with data:
        for tensor in kept:  # the source's external tensors (and large inline ones) follow into the file
            if tensor.data_location != onnx.TensorProto.EXTERNAL or external_info(tensor)[0] != _SCRATCH_DATA:
                stream_tensor(tensor, data, folder, _SCRATCH_DATA)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    mark_folder(out, scratch)
    return out, records


def _dequantize(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int,
                block: int) -> np.ndarray:
    """W [K, N] = (code - zero point) * scale per block of BLOCK rows of each column."""
    n, blocks = scales.shape
    values = _unpack(codes, block).astype(np.float32)  # [N, blocks, block]
    zp = 8.0 if zero_points is None else _unpack(zero_points, blocks).astype(np.float32)[..., None]
    weight = (values - zp) * scales[..., None].astype(np.float32)
    return np.ascontiguousarray(weight.reshape(n, blocks * block)[:, :k].T)


def requantize_nbits(graph: gs.Graph, records: dict[str, NBitsWeight], slices: dict[str, dict]) -> dict[str, int]:
    """Turn each MatMul that `dequantize_nbits` made back into a MatMulNBits (see the module doc); SLICES: the
    kept original index on each weight axis of every MatMul the passes sliced. Returns how many kept their
    tensors, were sliced from them, or were quantized afresh."""
    counts = {"kept": 0, "sliced": 0, "requantized": 0}
    existing = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    for node in [n for n in graph.nodes if n.op == "MatMul" and n.name in records]:
        weight = const_value(node.inputs[1])
        if weight is None or weight.ndim != 2:
            continue
        record = records[node.name]
        kind, tensors = _quantized(record, weight, slices.get(node.name, {}))
        counts[kind] += 1
        k, n = weight.shape
        # The original tensors keep their names (and, kept whole, are the very same tensors when something else,
        # e.g. a quantized embedding gather, still reads them); new ones are named after them.
        suffix = "" if kind == "kept" else f"/{node.name}"
        constants = []
        for original, value in zip(record.names, tensors):
            if value is None:
                continue
            shared = existing.get(original) if kind == "kept" else None
            constants.append(shared if shared is not None else gs.Constant(original + suffix, value))
        node.op, node.domain = "MatMulNBits", MS_DOMAIN
        node.attrs = {**record.attrs, "K": k, "N": n}
        data = node.inputs[0]
        node.inputs.clear()  # graph-surgeon's input list keeps each tensor's consumers in step
        node.inputs.extend([data, *constants])
    logger.info("MatMulNBits on export: %s", counts)
    return counts


def _quantized(record: NBitsWeight, weight: np.ndarray, kept: dict) -> tuple[str, tuple]:
    """(how, (codes, scales, zero points)) of WEIGHT [K, N]: the record's own, a slice of them, or fresh."""
    k, n = record.shape
    k_keep = np.asarray(kept.get(0, np.arange(k)))
    n_keep = np.asarray(kept.get(1, np.arange(n)))
    original = (record.codes, record.scales, record.zero_points)
    dequantized = record.dequantized()
    if weight.shape == dequantized.shape and np.array_equal(weight, dequantized):
        return "kept", original
    block = record.block
    whole_blocks = (len(k_keep) % block == 0 and k % block == 0
                    and all(np.array_equal(run, np.arange(run[0], run[0] + block)) and run[0] % block == 0
                            for run in k_keep.reshape(-1, block)))
    if (whole_blocks and weight.shape == (len(k_keep), len(n_keep))
            and np.array_equal(weight, dequantized[np.ix_(k_keep, n_keep)])):
        blocks = k_keep.reshape(-1, block)[:, 0] // block  # kept block index along K
        zp = record.zero_points
        if zp is not None:
            zp = _pack(_unpack(zp, record.scales.shape[1])[np.ix_(n_keep, blocks)])
        return "sliced", (record.codes[np.ix_(n_keep, blocks)], record.scales[np.ix_(n_keep, blocks)], zp)
    return "requantized", _fresh(weight, block, symmetric=record.zero_points is None,
                                 dtype=record.scales.dtype)


def _fresh(weight: np.ndarray, block: int, *, symmetric: bool, dtype) -> tuple:
    """Round-to-nearest 4-bit block quantization of WEIGHT [K, N] by ONNX Runtime's kernel (as its quantizer)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape
    blocks = -(-rows // block)
    padded = np.zeros((blocks * block, cols), dtype=np.float32)
    padded[:rows] = weight
    codes = np.zeros((cols, blocks, block // 2), dtype=np.uint8)
    zero_points = np.zeros((cols, (blocks + 1) // 2), dtype=np.uint8)
    scales = np.zeros((cols, blocks), dtype=np.float32)
    quantize_matmul_4bits(codes, padded, scales, zero_points, block, cols, rows, symmetric)
    return codes, scales.astype(dtype), None if symmetric else zero_points
