"""Calibration and held-out inputs for refitting a one-image-input model (a CNN detector, PP-OCR rec / det).

The inputs are those Taylor importance calibrates on, of the same kind (`taylor_calibration`): photos for
detectors, rendered text lines / pages for PP-OCR rec / det, from `--calib` or the packaged defaults
with the calibration seed (the evaluations use other seeds). The last HELD_OUT of them are held out.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..config import Calibration
from ..errors import InvalidArgumentError

__all__ = ["CHAIN_HELD_OUT", "CHAIN_IMAGES", "check_image_model", "image_inputs", "is_image_model"]

#: Calibration inputs the refits are fitted on, and inputs held out to check each fit.
CHAIN_IMAGES = 24
CHAIN_HELD_OUT = 8


def is_image_model(session) -> bool:
    """True if SESSION's model has one input [1, 3, H, W] (axis 1: its 3 colour channels)."""
    shapes = list(session.input_shapes.values())
    return len(shapes) == 1 and len(shapes[0]) == 4 and shapes[0][1] == 3


def check_image_model(session) -> tuple[int, ...]:
    """SESSION's one input shape [1, 3, H, W]; InvalidArgumentError for any other model."""
    shapes = session.input_shapes
    shape = next(iter(shapes.values())) if len(shapes) == 1 else ()
    # Axis 1 of an image input: its 3 colour channels.
    if len(shape) != 4 or shape[1] != 3:
        raise InvalidArgumentError("--compensate lstsq: not yet supported for this model (it needs a transformer "
                                   "with a pre-norm residual stream, or an image model with one [1, 3, H, W] "
                                   "input; post-norm refits are not built yet)")
    return tuple(shape)


def image_inputs(model: onnx.ModelProto, session, calibration: Calibration, *, count: int = CHAIN_IMAGES,
                 held_out: int = CHAIN_HELD_OUT) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, held-out) inputs of MODEL's one image input, each [1, 3, H, W] float32."""
    from ..importance.taylor_calibration import image_kind, model_image_inputs

    shape = check_image_model(session)
    total, kind = count + held_out, image_kind(model, shape)
    inputs = model_image_inputs(model, shape, calibration.source, kind=kind, count=total, seed=calibration.seed,
                                photo_seed=calibration.seed, flag="--compensate lstsq")
    if kind not in ("rec", "det"):
        inputs = [image[None] for image in inputs]  # axis 0: one [1, 3, S, S] input per stacked photo
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if len(inputs) < 2:
        raise InvalidArgumentError("--compensate lstsq: needs at least 2 calibration images (one to fit, one to "
                                   "check the fit on)")
    split = max(1, len(inputs) - held_out) if len(inputs) < total else count
    return inputs[:split], inputs[split:]
