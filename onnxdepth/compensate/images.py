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
    from ..calibration import calibration_images, calibration_ocr_lines, calibration_ocr_pages
    from ..importance.taylor_calibration import _graph_inputs, _taylor_image_kind

    shape = check_image_model(session)
    total, kind = count + held_out, _taylor_image_kind(model, session)
    if kind == "rec":
        dims = next(iter(_graph_inputs(model).values())).type.tensor_type.shape.dim
        # Axes 2 and 3 of the declared input: a fixed height / width is used as the OCR evaluation uses it.
        height = dims[2].dim_value if dims[2].HasField("dim_value") and dims[2].dim_value > 0 else 48
        width = dims[3].dim_value if dims[3].HasField("dim_value") and dims[3].dim_value > 0 else None
        inputs = calibration_ocr_lines(calibration.source, count=total, seed=calibration.seed, height=height,
                                       width=width)
    elif kind == "det":
        inputs = calibration_ocr_pages(calibration.source, count=total, seed=calibration.seed)
    else:
        if shape[2] != shape[3]:
            raise InvalidArgumentError("--compensate lstsq: needs an image model with a square [1, 3, S, S] input "
                                       "(give --input-shape)")
        # Axis 0 of the stacked images: one [1, 3, S, S] input per image.
        inputs = [image[None] for image in calibration_images(calibration.source, shape[2], count=total,
                                                                        seed=calibration.seed)]
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    if len(inputs) < 2:
        raise InvalidArgumentError("--compensate lstsq: needs at least 2 calibration images (one to fit, one to "
                                   "check the fit on)")
    split = max(1, len(inputs) - held_out) if len(inputs) < total else count
    return inputs[:split], inputs[split:]
