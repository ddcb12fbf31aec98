"""The cost of a prune in plain view: the pruned model against its parent on held-out data no selection saw.

`held_out_fidelity(pruned, parent, calibration, input_shapes)` draws the held-out inputs of the parent's kind
(`held_out`) and measures the kind's numbers (`measure`); `fidelity_line` is the line `prune` ends with.
Every prune records the result in its plan (`fidelity`); `onnxdepth eval --task fidelity` measures the same
numbers on the same data from the files.
"""

from __future__ import annotations

import logging

from ..config import Calibration
from ..errors import InvalidArgumentError
from .held_out import HeldOut, held_out_inputs, model_kind
from .measure import HEADLINES, measure_fidelity

__all__ = ["HEADLINES", "HeldOut", "fidelity_line", "held_out_fidelity", "held_out_inputs", "measure_fidelity",
           "model_kind"]

logger = logging.getLogger(__name__)

_LABELS = {"top1_agreement": "next-token top-1 agreement", "map50": "fidelity mAP50",
           "char_agreement": "character agreement", "box_f1": "text-box F1", "cosine": "output cosine"}


def held_out_fidelity(pruned, parent, calibration: Calibration, input_shapes: dict, *,
                      held_out: HeldOut | None = None) -> dict:
    """PRUNED's fidelity to PARENT (ModelProtos; PARENT unpruned) on held-out data drawn as CALIBRATION draws
    (HELD_OUT: already drawn). When no held-out data can be drawn (calibration text too short, a --calib
    folder with nothing past the calibration images), {"kind", "value": None, "reason"}."""
    try:
        held_out = held_out or held_out_inputs(parent, calibration, input_shapes)
    except InvalidArgumentError as exc:
        logger.warning("no fidelity check: %s", exc)
        return {"kind": model_kind(parent, input_shapes), "value": None, "drop": None, "reason": str(exc)}
    return measure_fidelity(pruned, parent, held_out)


def fidelity_line(fidelity: dict) -> str:
    """The one line a prune ends with: the headline, the kind's second number, and the data."""
    if fidelity.get("value") is None:
        return f"fidelity: n/a ({fidelity.get('reason', 'no held-out data')})"
    headline = f"{_LABELS.get(fidelity['metric'], fidelity['metric'])} {fidelity['value']:.4f}"
    extra = {"lm": lambda f: f", KL {f['kl']:.4f} nats/token",
             "detector": lambda f: f", mAP50-95 {f['map50_95']:.4f}",
             "rec": lambda f: f", line agreement {f['line_agreement']:.4f}"}.get(fidelity["kind"])
    if extra is None and "relative_error" in fidelity:
        extra = lambda f: f", relative error {f['relative_error']:.4f}"  # noqa: E731
    return (f"fidelity vs unpruned on {fidelity['data']}: {headline}{extra(fidelity) if extra else ''} "
            f"({fidelity['seconds']:.0f} s)")
