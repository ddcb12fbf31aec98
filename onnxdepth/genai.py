"""ONNX Runtime GenAI model folders: a pruned decoder written with a `genai_config.json` that matches it.

GenAI sizes its KV cache from the config: `num_hidden_layers` caches named by the `past_key_names` /
`present_key_names` templates (`past_key_values.%d.key`), numbered 0..n-1. After attention blocks are pruned
the surviving caches are renumbered in layer order (`renumber_caches`), the layer count and file name in the
config follow, and the folder's other files (tokenizer, chat template) are copied beside OUT.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnx

from .errors import ModelLoadError, UnsupportedModelError
from .fileio import write_atomic, write_json_atomic

__all__ = ["CONFIG_NAME", "config_beside", "renumber_caches", "write_folder"]

CONFIG_NAME = "genai_config.json"
# (config key under decoder.inputs / decoder.outputs, graph side) of each cache name template.
_TEMPLATES = (("inputs", "past_key_names"), ("inputs", "past_value_names"),
              ("outputs", "present_key_names"), ("outputs", "present_value_names"))


def config_beside(src: str | os.PathLike) -> dict | None:
    """The GenAI config in SRC's folder when SRC is that config's decoder, else None."""
    path = Path(src).parent / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        decoder = config["model"]["decoder"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a readable GenAI config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(decoder, dict) or decoder.get("filename", Path(src).name) != Path(src).name:
        return None  # a config for another file of the folder (an encoder, a vision model)
    return config


def _pattern(template: str) -> re.Pattern:
    """A name template with one %d (the layer index) as a regular expression capturing the index."""
    if template.count("%d") != 1:
        raise UnsupportedModelError(f"GenAI cache name template {template!r}: expected one %d")
    head, tail = template.split("%d")
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


def renumber_caches(model: onnx.ModelProto, config: dict) -> dict[str, str]:
    """Rename MODEL's KV-cache inputs and outputs (in place) to 0..n-1 over the surviving layers, in layer
    order; return {new name: old name} for every renamed one."""
    decoder = config["model"]["decoder"]
    templates = []
    for side, key in _TEMPLATES:
        template = decoder.get(side, {}).get(key)
        if template:
            templates.append((side, template, _pattern(template)))
    graph = model.graph
    names = {"inputs": [v.name for v in graph.input], "outputs": [v.name for v in graph.output]}
    layers_of = {}
    for side, template, pattern in templates:
        layers_of[template] = sorted(int(m.group(1)) for n in names[side] if (m := pattern.fullmatch(n)))
    layer_sets = {tuple(v) for v in layers_of.values()}
    if len(layer_sets) > 1:
        raise UnsupportedModelError(f"the pruned model's cache inputs and outputs cover different layers: "
                                    f"{ {t: v for t, v in layers_of.items()} }")
    survivors = list(layer_sets.pop()) if layer_sets else []
    renames: dict[str, str] = {}  # old -> new
    for _, template, _ in templates:
        for new, old in enumerate(survivors):
            if old != new:
                renames[template % old] = template % new
    _rename(graph, renames)
    return {new: old for old, new in renames.items()}


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename tensors (graph inputs / outputs and every reference to them) as RENAMES says (old -> new)."""
    if not renames:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def write_folder(src: str | os.PathLike, out: Path, model: onnx.ModelProto, config: dict) -> None:
    """Beside OUT: CONFIG with the pruned MODEL's layer count and file name, and every other file of SRC's
    folder that OUT's folder lacks (tokenizer, chat template; not models, their data or onnxdepth's plans)."""
    src = Path(src)
    past_key = _pattern(config["model"]["decoder"]["inputs"].get("past_key_names", "past_key_values.%d.key"))
    layers = sum(1 for v in model.graph.input if past_key.fullmatch(v.name))
    updated = json.loads(json.dumps(config))  # a deep copy
    updated["model"]["decoder"]["num_hidden_layers"] = layers
    updated["model"]["decoder"]["filename"] = out.name
    model_files = {src.name, *(_data_files(src))}
    for path in sorted(src.parent.iterdir()):
        target = out.parent / path.name
        if (not path.is_file() or path.name in model_files or path.name == CONFIG_NAME or target.exists()
                or path.suffix == ".onnx" or path.name.endswith((".onnx.data", ".onnx_data", ".plan.json"))):
            continue
        write_atomic(target, path.read_bytes())  # tokenizer and template files: a few MB at most
    write_json_atomic(out.parent / CONFIG_NAME, updated)


def _data_files(src: Path) -> set[str]:
    """Names of the external data files SRC's tensors refer to."""
    from .graph.external import external_tensors

    light = onnx.load(str(src), load_external_data=False)
    found = set()
    for tensor in external_tensors(light):
        for entry in tensor.external_data:
            if entry.key == "location":
                found.add(Path(entry.value).name)
    return found
