"""Least-squares chain refits of a pruned CNN: surviving Convs refitted to reproduce the unpruned outputs.

When a unit is replaced by identity (or its neighbours' channels are cut so widths stay valid), the next
Conv downstream reads a different input. Its kernel and bias are refitted by ridge least squares over
im2col patches of the *pruned* model's input to it (sampled output positions, `im2col`), so that its output
(the Conv's own output, before any activation) reproduces the *unpruned* model's at that point, on the
output channels it keeps. The fit is checked on held-out calibration images and folded only if it lowers
the error there; every Conv considered gets a record, with the reason when it is not folded.

Which Convs: `nearest` (the first surviving Conv on every path out of a removed or width-cut node) or
`downstream` (every surviving Conv after one). Refits run in waves: a Conv is fitted once every refitted
Conv upstream of it has been folded, on a fresh run of the pruned model (`sequential`); without it all
are fitted from one run of the model as selection left it.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..graph.consts import const_value
from ..graph.extract import extract_submodel, with_extra_outputs
from .conv_fit import ConvFit, Sample, conv_matrix, fold_conv, relative_error
from .im2col import conv_geometry, sample_positions

__all__ = ["MAX_FEATURES", "POSITIONS", "SCOPES", "fit_consumer_chains", "refit_candidates"]

logger = logging.getLogger(__name__)

#: Which surviving Convs are refitted (see the module docstring); SCOPE is the default.
SCOPES = ("nearest", "downstream")
SCOPE = "downstream"
#: Output positions sampled per image and Conv (all of them on smaller maps).
POSITIONS = 1024
#: Features per group (in_g x kh x kw + bias) above which a Conv is not refitted (its X^T X is d^2 float64).
MAX_FEATURES = 4608
#: Bytes of pruned-model activations held at once; a wave over it is run in several parts.
ACTIVATION_BUDGET = 1 << 30


def _name_nodes(graph: gs.Graph) -> None:
    """Name nodes as PruneSession does (unnamed or duplicate: op_index), so names match the session's."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{index}"
        seen.add(node.name)


def refit_candidates(model: onnx.ModelProto, session, scope: str = SCOPE) -> list[gs.Node]:
    """SESSION's surviving Convs whose input pruning changed, in topological order.

    Changes start at the nodes of MODEL that pruning removed and at the Convs whose output channels were
    cut; they are followed forward through MODEL's graph up to the first surviving Conv (`nearest`), or
    through it (`downstream`)."""
    original = gs.import_onnx(model)
    _name_nodes(original)
    current = {node.name: node for node in session.graph.nodes}
    sources = [n for n in original.nodes if n.name not in current or n.name in session.output_channels]
    found: set[str] = set()
    visited: set[int] = set()
    stack = [t for n in sources for t in n.outputs]
    while stack:
        for reader in stack.pop().outputs:
            survivor = current.get(reader.name)
            if reader.op == "Conv" and survivor is not None and survivor.op == "Conv":
                found.add(reader.name)
                if scope == "nearest":
                    continue
            if id(reader) not in visited:
                visited.add(id(reader))
                stack.extend(reader.outputs)
    session.graph.toposort()
    return [n for n in session.graph.nodes if n.name in found]


def _waves(graph: gs.Graph, convs: list[gs.Node], sequential: bool) -> list[list[gs.Node]]:
    """CONVS in waves: wave k holds those with k refitted Convs on their longest path from the input."""
    if not sequential:
        return [convs] if convs else []
    chosen = {id(n) for n in convs}
    level: dict[int, int] = {}  # id(node) -> the highest wave of a chosen Conv at or upstream of it
    waves: list[list[gs.Node]] = []
    for node in graph.nodes:  # topological order
        upstream = max((level.get(id(t.inputs[0]), -1) for t in node.inputs if t.inputs), default=-1)
        level[id(node)] = upstream + 1 if id(node) in chosen else upstream
        if id(node) in chosen:
            if level[id(node)] == len(waves):
                waves.append([])
            waves[level[id(node)]].append(node)
    return waves


def _unfit_reason(node: gs.Node) -> str | None:
    """Why Conv NODE cannot be refitted, or None."""
    weight = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "its weight is not a constant"
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_value(node.inputs[2]) is None:
        return "its bias is not a constant"
    try:
        conv_geometry(node, weight.shape)
    except UnsupportedModelError as exc:
        return str(exc).split(": ", 1)[-1]
    features = int(np.prod(weight.shape[1:])) + 1  # in_g x kh x kw, and the bias
    if features > MAX_FEATURES:
        return f"{features} features per group (over {MAX_FEATURES})"
    return None


def _image_feed(session) -> str:
    """The name of the one image input of ORT SESSION."""
    return session.get_inputs()[0].name


def _targets(model: onnx.ModelProto, convs: list[gs.Node], origins: dict, images: list[np.ndarray]) -> dict:
    """Per Conv name, one Sample per image: positions drawn from a seed of the Conv's name and the image's
    index, and the unpruned output there on the output channels the Conv keeps (ORIGINS)."""
    from ..runtime import open_session

    names = [c.outputs[0].name for c in convs]
    ort = open_session(extract_submodel(with_extra_outputs(model, names), [], names))
    samples: dict[str, list[Sample]] = {c.name: [] for c in convs}
    for index, image in enumerate(images):
        for conv, value in zip(convs, ort.run(names, {_image_feed(ort): image})):
            rng = np.random.default_rng([zlib.crc32(conv.name.encode()), index])
            rows, cols = sample_positions(value.shape[2], value.shape[3], POSITIONS, rng)  # value [1, out, H, W]
            target = value[0][:, rows, cols].T  # [positions, out]
            keep = origins.get(conv.name)
            samples[conv.name].append(Sample(rows, cols, target if keep is None else target[:, keep],
                                             (value.shape[2], value.shape[3])))
    return samples


def _parts(convs: list[gs.Node], shapes: dict, images: int) -> list[list[gs.Node]]:
    """CONVS split so that the inputs of each part, for IMAGES images, fit ACTIVATION_BUDGET (estimated from
    the unpruned shapes SHAPES; 1 MiB for an unknown one)."""
    parts: list[list[gs.Node]] = [[]]
    used = 0
    for conv in convs:
        shape = shapes.get(conv.inputs[0].name)
        size = 4 * int(np.prod(shape)) if shape and all(isinstance(d, int) for d in shape) else 1 << 20
        if parts[-1] and used + size * images > ACTIVATION_BUDGET:
            parts.append([])
            used = 0
        parts[-1].append(conv)
        used += size * images
    return parts


def _pruned_inputs(model: onnx.ModelProto, session, convs: list[gs.Node], images: list[np.ndarray]) -> dict:
    """Per Conv name, its input [in, H, W] in the pruned model as it stands, one per image."""
    from ..runtime import open_session

    names = sorted({c.inputs[0].name for c in convs})
    pruned = session.to_model(model, keep=set(names))
    ort = open_session(extract_submodel(with_extra_outputs(pruned, names), [], names))
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for image in images:
        for name, value in zip(names, ort.run(names, {_image_feed(ort): image})):
            values[name].append(value[0])  # axis 0: the batch of one
    return {c.name: values[c.inputs[0].name] for c in convs}


def _refit(node: gs.Node, inputs: list[np.ndarray], samples: list[Sample], calibration: int) -> dict:
    """Fit NODE on the first CALIBRATION images, check it on the rest, fold it if it lowers the error there."""
    record = {"kind": "conv_chain", "node": node.name, "folded": False}
    weight = const_value(node.inputs[1])
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    geometry = conv_geometry(node, weight.shape)
    if samples[0].target.shape[1] != weight.shape[0]:
        record["reason"] = "its output channels do not match the unpruned Conv's"
        return record
    # Axes 1, 2 of an input [in, H, W]: its spatial size, which the output map must match the unpruned one at.
    if geometry.out_size(*inputs[0].shape[1:]) != samples[0].shape:
        record["reason"] = "its output size differs from the unpruned Conv's"
        return record
    fit = ConvFit(geometry, bias is not None)
    for image, sample in zip(inputs[:calibration], samples[:calibration]):
        fit.add(image, sample)
    matrix = fit.solve()
    current = conv_matrix(weight, bias, geometry.group)
    before, after = relative_error(inputs[calibration:], samples[calibration:], geometry, bias is not None,
                                   [current, matrix])
    record.update(rows=fit.rows, held_out_error={"before": round(before, 6), "after": round(after, 6)})
    if not after < before:
        record["reason"] = "the fit does not lower the held-out error"
        logger.info("not folding %s: held-out error %.4f -> %.4f", node.name, before, after)
        return record
    fold_conv(node, matrix)
    record["folded"] = True
    logger.info("refitted %s: held-out error %.4f -> %.4f", node.name, before, after)
    return record


def fit_consumer_chains(model: onnx.ModelProto, session, calibration: list[np.ndarray], held_out: list[np.ndarray],
                        *, scope: str | None = None, sequential: bool = True) -> list[dict]:
    """Refit SESSION's (pruned from MODEL) surviving Convs whose input pruning changed, in topological order.

    CALIBRATION / HELD_OUT: image inputs [1, 3, H, W] to fit on / check each fit on. Returns one record per
    Conv considered (`{"kind": "conv_chain", "node", "held_out_error": {"before", "after"}, "folded",
    "reason"?}`), in the order they were fitted. SCOPE: one of SCOPES (None: the module's SCOPE, read now)."""
    records, eligible = [], []
    for node in refit_candidates(model, session, scope or SCOPE):
        reason = _unfit_reason(node)
        if reason is None:
            eligible.append(node)
        else:
            records.append({"kind": "conv_chain", "node": node.name, "folded": False, "reason": reason})
    if not eligible:
        return records
    images = list(calibration) + list(held_out)
    samples = _targets(model, eligible, session.output_channels, images)
    for wave in _waves(session.graph, eligible, sequential):
        for part in _parts(wave, session.shapes, len(images)):
            inputs = _pruned_inputs(model, session, part, images)
            for node in part:
                records.append(_refit(node, inputs.pop(node.name), samples.pop(node.name), len(calibration)))
            session.invalidate()
    return records
