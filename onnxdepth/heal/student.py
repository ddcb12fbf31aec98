"""The model being healed, as a PyTorch module whose trainable tensors are the ONNX graph's own initializers.

The pruned ONNX graph is converted with onnx2torch (as for Taylor importance, `importance.taylor`), so no model
source code is needed and the graph trained is exactly the graph written back. Trainable are the weights and
biases of every linear / conv layer (MatMul, Gemm, Conv, ConvTranspose) and the scales and shifts of norms
(LayerNormalization, BatchNormalization, InstanceNormalization, and the 1-D vectors a decomposed norm or a bias
Add multiplies or adds); embeddings (a float Gather table) train with full fine-tuning only. Constants such as
rotary caches, masks and exponents stay frozen.

With LoRA (`lora_rank` > 0) every trainable linear / conv weight W (seen as a matrix [rows, cols]: a MatMul
weight [K, N], a Gemm / Conv weight [out, in x kernel]) gets W + U V, U [rows, r] and V [r, cols] with V = 0 at
the start (so step 0 is the input model), through torch's parametrizations; W itself stays frozen, norms and
biases train. `merged_initializers` folds U V into W at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from ..graph.external import folder_of, has_external, read_tensor
from ..importance.taylor import _module_name, _weight_tensors, torch_module

__all__ = ["Student", "trainable_roles"]

#: Ops whose input 1 is a weight matrix / kernel and input 2 a bias.
_LINEAR_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
#: Ops whose inputs 1 and 2 are a norm's scale and shift.
_NORM_OPS = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "SimplifiedLayerNormalization",
             "GroupNormalization"}


def trainable_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Initializer name -> its role ("linear": a weight LoRA adapts; "vector": a bias or norm scale / shift;
    "embedding"), for the initializers healing may change."""
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    inits = {t.name: t for t in model.graph.initializer if t.data_type in floating}
    roles: dict[str, str] = {}
    for node in model.graph.node:
        names = list(node.input)
        if node.op_type in _LINEAR_OPS and len(names) > 1 and names[1] in inits and len(inits[names[1]].dims) >= 2:
            roles[names[1]] = "linear"
            if len(names) > 2 and names[2] in inits:
                roles.setdefault(names[2], "vector")
        elif node.op_type in _NORM_OPS:
            for name in names[1:3]:
                if name in inits:
                    roles.setdefault(name, "vector")
        elif node.op_type in ("Mul", "Add"):
            # A bias Add or a decomposed norm's scale: a 1-D vector of at least 8 entries (not a scalar constant).
            for name in names:
                if name in inits and len(inits[name].dims) == 1 and inits[name].dims[0] >= 8:
                    roles.setdefault(name, "vector")
        elif node.op_type == "Gather" and names and names[0] in inits and len(inits[names[0]].dims) == 2:
            roles.setdefault(names[0], "embedding")
    return roles


@dataclass
class _Tensor:
    """One trainable initializer: its torch tensor in the module and how its layout relates to the ONNX one."""

    name: str
    role: str
    tensor: object  # the module's parameter or buffer
    transposed: bool  # onnx2torch stored it transposed (a Gemm turned into nn.Linear)


class Student:
    """MODEL (a pruned ONNX graph) as a trainable PyTorch module: `module`, the trainable `parameters()`, and
    `updated_initializers()` to write back."""

    def __init__(self, model: onnx.ModelProto, *, lora_rank: int = 0, lora_alpha: float | None = None,
                 train_embeddings: bool = True, device: str = "cpu", checkpoint_segments: int = 0):
        import torch

        self.torch = torch
        self.model = model
        self.device = device
        # Moved before the tensors are looked up: `to` replaces buffers by new tensors on the device.
        self.module = torch_module(model).to(device)
        self.lora_rank = lora_rank
        roles = trainable_roles(model)
        self.tensors = self._find(roles)
        if not self.tensors:
            raise UnsupportedModelError("heal: no trainable weights found in the graph (no MatMul / Gemm / Conv "
                                        "with initializer weights)")
        for entry in self.tensors.values():
            entry.tensor.requires_grad_(False)
        self.adapters: dict[str, object] = {}
        for entry in self.tensors.values():
            if entry.role == "embedding" and (lora_rank or not train_embeddings):
                continue
            if entry.role == "linear" and lora_rank:
                self._add_adapter(entry, lora_rank, lora_alpha if lora_alpha is not None else float(lora_rank))
            else:
                entry.tensor.requires_grad_(True)
        if checkpoint_segments:
            self.checkpoint(checkpoint_segments)

    def checkpoint(self, segments: int) -> None:
        """Run the forward pass in SEGMENTS checkpointed runs from now on (`recompute.Checkpointed`)."""
        from .recompute import Checkpointed

        self.module = Checkpointed(self.module, segments)

    def _find(self, roles: dict[str, str]) -> dict[str, _Tensor]:
        """The module tensors behind ROLES' initializers, with their layout checked against the ONNX values."""
        inputs_of = {_module_name(n.name): list(n.input) for n in self.model.graph.node}
        folder = folder_of(self.model)
        values = {t.name: t for t in self.model.graph.initializer}
        found: dict[str, _Tensor] = {}
        for (module_name, index), tensor in _weight_tensors(self.module, self.model).items():
            names = inputs_of.get(module_name, [])
            if index >= len(names) or names[index] not in roles or names[index] in found:
                continue
            name = names[index]
            onnx_value = _array(values[name], folder)
            held = tensor.detach().cpu().numpy()
            if held.shape == onnx_value.shape and np.array_equal(held, onnx_value):
                transposed = False
            elif held.ndim == 2 and held.T.shape == onnx_value.shape and np.array_equal(held.T, onnx_value):
                transposed = True
            else:
                continue  # converted in some other form (folded, reshaped): left frozen rather than guessed
            found[name] = _Tensor(name, roles[name], tensor, transposed)
        return found

    def _add_adapter(self, entry: _Tensor, rank: int, alpha: float) -> None:
        """W -> W + U V * (ALPHA / RANK) on ENTRY's tensor, through a parametrization of its owner module."""
        torch = self.torch
        from torch.nn.utils import parametrize

        owner, attribute = self._owner(entry.tensor)
        shape = tuple(entry.tensor.shape)
        # The weight as a matrix: a MatMul weight [K, N] as it is; a Linear / Conv weight [out, in, *kernel] as
        # [out, in x kernel]; onnx2torch's transposed Gemm weight is [out, in] already.
        rows, cols = shape[0], int(np.prod(shape[1:]))
        rank = min(rank, rows, cols)
        adapter = _LowRank(torch, rows, cols, rank, alpha / rank, shape).to(entry.tensor.device)
        parametrize.register_parametrization(owner, attribute, adapter, unsafe=True)
        self.adapters[entry.name] = (owner, attribute, adapter)

    def _owner(self, tensor) -> tuple[object, str]:
        for name, value in list(self.module.named_parameters()) + list(self.module.named_buffers()):
            if value is tensor:
                prefix, _, attribute = name.rpartition(".")
                return (self.module.get_submodule(prefix) if prefix else self.module), attribute
        raise UnsupportedModelError("heal: a weight of the converted module has no owner")  # not reached

    def parameters(self) -> list:
        """What the optimiser updates: the adapters' U and V, and the tensors trained directly."""
        trained = [e.tensor for e in self.tensors.values() if e.tensor.requires_grad]
        return trained + [p for _, _, adapter in self.adapters.values() for p in adapter.parameters()]

    def trainable_count(self) -> int:
        return sum(int(p.numel()) for p in self.parameters())

    def state(self) -> dict:
        """A copy of everything training changes (for the best checkpoint and --resume)."""
        return {id_: p.detach().clone() for id_, p in enumerate(self.parameters())}

    def load_state(self, state: dict) -> None:
        with self.torch.no_grad():
            for id_, p in enumerate(self.parameters()):
                p.copy_(state[id_])

    def current_weight(self, name: str) -> np.ndarray:
        """Initializer NAME as the module now computes it, in the ONNX layout (adapters merged)."""
        entry = self.tensors[name]
        with self.torch.no_grad():
            if name in self.adapters:
                owner, attribute, _ = self.adapters[name]
                value = getattr(owner, attribute)  # the parametrized value: W + U V
            else:
                value = entry.tensor
            array = value.detach().float().cpu().numpy()
        return np.ascontiguousarray(array.T if entry.transposed else array)

    def updated_initializers(self) -> dict[str, np.ndarray]:
        """Initializer name -> its new value (in its original dtype), for every tensor training could change."""
        values = {t.name: t for t in self.model.graph.initializer}
        changed = {}
        for name, entry in self.tensors.items():
            if not (entry.tensor.requires_grad or name in self.adapters):
                continue
            dtype = onnx.helper.tensor_dtype_to_np_dtype(values[name].data_type)
            changed[name] = self.current_weight(name).astype(dtype)
        return changed


class _LowRank:
    """The parametrization W -> W + (U @ V) * SCALE reshaped to W's shape (a torch.nn.Module, built lazily so
    this module imports without torch)."""

    def __new__(cls, torch, rows: int, cols: int, rank: int, scale: float, shape: tuple):
        class LowRank(torch.nn.Module):
            def __init__(self):
                super().__init__()
                # U as in LoRA's A (Kaiming-uniform), V as its B (zeros): the product starts at 0.
                self.u = torch.nn.Parameter(torch.empty(rows, rank))
                torch.nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
                self.v = torch.nn.Parameter(torch.zeros(rank, cols))

            def forward(self, weight):
                return weight + (self.u @ self.v).reshape(shape).to(weight.dtype) * scale

        return LowRank()


def _array(tensor: onnx.TensorProto, folder: str | None) -> np.ndarray:
    return np.asarray(read_tensor(tensor, folder)) if has_external(tensor) else numpy_helper.to_array(tensor)
