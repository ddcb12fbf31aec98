"""The residual stream of a pre-norm transformer, read off the graph: who writes into it, and what pruning removed.

Each layer writes into the stream twice, through its attention's output projection and its MLP's down
projection: `stream_out = Add(stream_in, writer_output)`. Pruning a whole attention block or MLP patches
its Add away (h + id(h) -> h), so the stream skips it. A *run* is a maximal sequence of removed writers;
least squares refits the nearest surviving writer before it (`onnxdepth.compensate.residual`).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..graph.consts import const_value

__all__ = ["Run", "Writer", "removed_runs", "stream_writers"]


@dataclass(frozen=True)
class Writer:
    """One write into the residual stream: STREAM_OUT = STREAM_IN + OUTPUT, OUTPUT computed by NODE."""

    unit: str  # the fine-granularity unit whose removal removes this write (layerN.attention / layerN.mlp)
    node: str  # the writing transform (output projection or down projection)
    output: str  # its output tensor (after its bias Add, if any)
    stream_in: str
    stream_out: str


@dataclass(frozen=True)
class Run:
    """Consecutive removed writers, and the surviving writer before them that least squares refits (None
    when the run starts at the first writer)."""

    removed: tuple[Writer, ...]
    fold: Writer | None

    @property
    def target(self) -> str:
        """The unpruned stream after the run: what the refit writer's write should reproduce."""
        return self.removed[-1].stream_out


def _residual_add(output: gs.Tensor) -> gs.Node | None:
    """The Add that writes OUTPUT into the stream: its single consumer, adding a non-constant tensor."""
    adds = [c for c in output.outputs if c.op == "Add" and len(c.inputs) == 2]
    if len(adds) != 1 or len(output.outputs) != 1:
        return None
    add = adds[0]
    other = add.inputs[0] if add.inputs[1] is output else add.inputs[1]
    return add if const_value(other) is None else None


def _after_bias(output: gs.Tensor) -> gs.Tensor:
    """OUTPUT, or the output of the bias Add (a constant on its last axis) that is its only consumer."""
    if len(output.outputs) == 1 and output.outputs[0].op == "Add":
        add = output.outputs[0]
        other = add.inputs[0] if add.inputs[1] is output else add.inputs[1]
        value = const_value(other)
        if value is not None and value.ndim >= 1 and value.size == value.shape[-1]:
            return add.outputs[0]
    return output


def stream_writers(session) -> list[Writer]:
    """The writers of SESSION's unpruned transformer, in stream order; [] when the layout is not a pre-norm
    residual stream (each write's Add feeding the next write's Add, as in Llama; post-norm BERT is not)."""
    writers: list[Writer] = []
    for layer in session.layers:
        down = layer.mlp.get("mlp_down") or layer.mlp.get("mlp_1")
        writes = [(f"layer{layer.index}.attention", layer.attention.o, layer.attention.output)]
        if down is not None:
            writes.append((f"layer{layer.index}.mlp", down, _after_bias(down.outputs[0])))
        for unit, node, output in writes:
            add = _residual_add(output)
            if add is None:
                return []
            stream_in = add.inputs[0] if add.inputs[1] is output else add.inputs[1]
            writers.append(Writer(unit, node.name, output.name, stream_in.name, add.outputs[0].name))
    # Pre-norm: every write adds to the stream the previous write produced (possibly through a Cast to the
    # same type or an Identity, as exporters spell a norm's input).
    tensors = session.graph.tensors()
    if any(not _continues(tensors[b.stream_in], a.stream_out) for a, b in zip(writers, writers[1:])):
        return []
    return writers


def _continues(tensor: gs.Tensor, name: str, limit: int = 4) -> bool:
    """True if TENSOR is the tensor NAME, or is computed from it by a short chain of Cast / Identity nodes."""
    for _ in range(limit + 1):
        if tensor.name == name:
            return True
        if len(tensor.inputs) != 1 or tensor.inputs[0].op not in ("Cast", "Identity"):
            return False
        tensor = tensor.inputs[0].inputs[0]
    return False


def removed_runs(session, writers: list[Writer]) -> list[Run]:
    """The runs of writers SESSION's pruning removed (their residual Add, or at fine granularity the writing
    projection itself, is gone from the graph: h + id(h) is patched to h + 0 and keeps its Add)."""
    added = {t.name for node in session.graph.nodes if node.op == "Add" for t in node.outputs}
    present = {node.name for node in session.graph.nodes}
    runs: list[Run] = []
    current: list[Writer] = []
    fold: Writer | None = None
    for writer in writers:
        if writer.stream_out not in added or writer.node not in present:
            current.append(writer)
            continue
        if current:
            runs.append(Run(tuple(current), fold))
            current = []
        fold = writer
    if current:
        runs.append(Run(tuple(current), fold))
    return runs
