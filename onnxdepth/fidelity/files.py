"""`onnxdepth eval --task fidelity`: the prune's fidelity line, measured again from the files.

The held-out data is drawn as the prune drew it: the calibration settings (source, windows, seed) and the
input shapes are read from the plan in the pruned model's metadata, and any one the command line gives
replaces the plan's. On the same data the numbers equal the line `prune` printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..config import Calibration
from ..errors import InvalidArgumentError

__all__ = ["file_fidelity"]

#: eval option -> Calibration field (None in the options: the plan's value, else the Calibration default).
_CALIBRATION_OPTIONS = {"calib": "source", "calib_sequences": "sequences", "calib_length": "length", "seed": "seed"}


def _stored_plan(path: Path) -> dict | None:
    from ..api import stored_plan

    try:
        return stored_plan(path)
    except InvalidArgumentError:
        return None  # not pruned by onnxdepth: the command line and the defaults describe the data


def _calibration(plan: dict | None, reference: Path, options: Mapping[str, Any]) -> Calibration:
    """The plan's calibration with the command line's options on top; the tokenizer is the reference's."""
    fields = dict((plan or {}).get("calibration") or {})
    fields.pop("model_path", None)
    for option, field in _CALIBRATION_OPTIONS.items():
        if options.get(option) is not None:
            fields[field] = options[option]
    return Calibration(**fields, model_path=str(reference))


def file_fidelity(model_path: Path, reference: Path, options: Mapping[str, Any]) -> dict:
    """The fidelity of the pruned model at MODEL_PATH to the unpruned one at REFERENCE (`held_out_fidelity`)."""
    from ..graph.io import load_model
    from ..graph.shapes import concrete_input_shapes
    from . import held_out_fidelity

    plan = _stored_plan(model_path)
    parent = load_model(reference)
    recorded = (plan or {}).get("input_shapes")
    shapes = concrete_input_shapes(parent, {k: tuple(v) for k, v in recorded.items()} if recorded else None)
    result = held_out_fidelity(load_model(model_path), parent, _calibration(plan, reference, options), shapes)
    if result.get("value") is None:
        raise InvalidArgumentError(f"--task fidelity: {result.get('reason', 'no held-out data')}")
    return result
