"""onnx2torch converters for the op versions that modern exporters emit and onnx2torch 1.5 lacks.

Registered once, on first use, so that the Taylor sidecar can evaluate optimum's Llama exports
(opset 18: ReduceMean with axes as an input, LessOrEqual-16) with autograd, and paddle2onnx's PP-OCR
graphs, whose BatchNormalization inputs have no rank that shape inference can find (the SVTR neck reshapes
by runtime shapes): onnx2torch picks BatchNorm1d/2d/3d by that rank and gives up without it.
"""

from __future__ import annotations

__all__ = ["register_missing_converters"]

_REGISTERED = False

#: Reductions whose axes moved from an attribute to an input in opset 18.
_REDUCTIONS_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                  "ReduceLogSumExp", "ReduceSumSquare")


def register_missing_converters() -> None:
    """Add the missing converters to onnx2torch's registry (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import torch
    from onnx2torch.node_converters import registry
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    known = {(k.operation_type, k.version) for k in registry._CONVERTER_REGISTRY}

    def alias(op_type: str, old: int, new: int) -> None:
        # Same semantics in both versions (only the type lists grew): reuse the older converter.
        if (op_type, new) in known:
            return
        older = next(k for k in registry._CONVERTER_REGISTRY if k.operation_type == op_type and k.version == old)
        registry.add_converter(operation_type=op_type, version=new)(registry._CONVERTER_REGISTRY[older])

    for op_type, old, new in (("LessOrEqual", 12, 16), ("GreaterOrEqual", 12, 16)):
        alias(op_type, old, new)

    def resize_18(node, graph):
        # Resize-18 only adds attributes (antialias, axes, keep_aspect_ratio_policy); at their defaults it
        # is Resize-13, which onnx2torch converts.
        extra = {k: v for k, v in node.attributes.items()
                 if k in ("antialias", "axes", "keep_aspect_ratio_policy") and v not in (0, None, "stretch")}
        if extra:
            raise NotImplementedError(f"Resize-18 with {', '.join(sorted(extra))}")
        older = next(k for k in registry._CONVERTER_REGISTRY if k.operation_type == "Resize" and k.version == 13)
        return registry._CONVERTER_REGISTRY[older](node, graph)

    for version in (18, 19):
        if ("Resize", version) not in known:
            registry.add_converter(operation_type="Resize", version=version)(resize_18)

    class _Identity(torch.nn.Module):
        def forward(self, x):
            return x

    def reduce_18(node, graph):
        keepdims = node.attributes.get("keepdims", 1)
        noop = node.attributes.get("noop_with_empty_axes", 0)
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                axes = [int(a) for a in get_const_value(node.input_values[1], graph).reshape(-1).tolist()]
            except KeyError as exc:
                raise NotImplementedError(f"{node.operation_type}-18 with non-constant axes") from exc
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
        if not axes and noop:
            return OperationConverterResult(torch_module=_Identity(), onnx_mapping=mapping)
        module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes or None, keepdims=keepdims)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    for op_type in _REDUCTIONS_18:
        if (op_type, 18) not in known:
            registry.add_converter(operation_type=op_type, version=18)(reduce_18)

    _register_flatten(torch, registry, known, OnnxMapping, OperationConverterResult)
    _register_batch_norm(torch, registry, OnnxMapping, OperationConverterResult)
    _REGISTERED = True


def _register_flatten(torch, registry, known, OnnxMapping, OperationConverterResult) -> None:
    """ONNX Flatten for every version, axis 0 included (replaces onnx2torch's, which breaks on it)."""

    class _Flatten(torch.nn.Module):
        """ONNX Flatten: [prod(shape[:axis]), prod(shape[axis:])], axis 0 included (onnx2torch breaks on it)."""

        def __init__(self, axis: int):
            super().__init__()
            self.axis = axis

        def forward(self, x):
            axis = self.axis + x.dim() if self.axis < 0 else self.axis  # negative axes count from the end
            lead = 1
            for size in x.shape[:axis]:
                lead *= size
            return x.reshape(lead, -1)

    def flatten(node, graph):
        return OperationConverterResult(torch_module=_Flatten(node.attributes.get("axis", 1)),
                                        onnx_mapping=OnnxMapping(inputs=tuple(node.input_values),
                                                                 outputs=tuple(node.output_values)))

    for key in [k for k in registry._CONVERTER_REGISTRY if k.operation_type == "Flatten"]:
        registry._CONVERTER_REGISTRY[key] = flatten
    if ("Flatten", 21) not in known:
        registry.add_converter(operation_type="Flatten", version=21)(flatten)


def _register_batch_norm(torch, registry, OnnxMapping, OperationConverterResult) -> None:
    """Inference BatchNormalization of any input rank, for constant statistics (onnx2torch's otherwise)."""

    class _BatchNorm(torch.nn.Module):
        """F.batch_norm in inference mode: channels on axis 1 whatever the rank (no BatchNorm1d/2d/3d choice).

        Scale and bias are parameters named weight / bias, so the Taylor sidecar keys them as ONNX inputs
        1 and 2, as for onnx2torch's own BatchNorm modules; the running statistics are buffers.
        """

        def __init__(self, scale, bias, mean, var, epsilon: float):
            super().__init__()
            self.weight = torch.nn.Parameter(scale)
            self.bias = torch.nn.Parameter(bias)
            self.register_buffer("running_mean", mean)
            self.register_buffer("running_var", var)
            self.epsilon = epsilon

        def forward(self, x):
            return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                                  training=False, eps=self.epsilon)

    keys = [k for k in registry._CONVERTER_REGISTRY if k.operation_type == "BatchNormalization"]
    originals = {k: registry._CONVERTER_REGISTRY[k] for k in keys}

    def converter_for(original):
        def batch_norm(node, graph):
            stats = node.input_values[1:5]  # scale, B, input_mean, input_var
            if len(node.output_values) != 1 or len(stats) != 4 or not all(v in graph.initializers for v in stats):
                return original(node, graph)  # training-mode outputs or computed statistics
            scale, bias, mean, var = (graph.initializers[v].to_torch().float() for v in stats)
            module = _BatchNorm(scale, bias, mean, var, float(node.attributes.get("epsilon", 1e-5)))
            return OperationConverterResult(torch_module=module,
                                            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                                     outputs=tuple(node.output_values)))

        return batch_norm

    for key, original in originals.items():
        registry._CONVERTER_REGISTRY[key] = converter_for(original)
