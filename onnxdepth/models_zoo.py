"""Locate real ONNX models shipped inside installed packages, without importing those packages.

* ``nudenet-yolov8n``: YOLOv8n detector bundled with ``nudenet`` (``nudenet/320n.onnx``).
* ``ppocr-det`` / ``ppocr-rec``: PP-OCRv4 detector / recognizer bundled with
  ``rapidocr-onnxruntime`` (``rapidocr_onnxruntime/models/ch_PP-OCRv4_*_infer.onnx``).

Install them with ``pip install 'onnxdepth[models]'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from onnxdepth.errors import InvalidArgumentError, ModelLoadError

__all__ = ["PACKAGED", "nudenet_yolov8n", "ppocr_det", "ppocr_rec", "packaged_model"]

_HINT = "pip install 'onnxdepth[models]'"


def _package_dirs(package: str) -> list[Path]:
    """Directories of an installed package, found via its import spec (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return [Path(spec.origin).parent]
    return []


def _find(package: str, distribution: str, relpath: str) -> Path:
    dirs = _package_dirs(package)
    if not dirs:
        raise ModelLoadError(f"package {distribution!r} is not installed (needed for {relpath}): {_HINT}")
    for d in dirs:
        candidate = d / relpath
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{relpath} not found in installed package {distribution!r} at {dirs[0]}; reinstall it: {_HINT}"
    )


def nudenet_yolov8n() -> Path:
    """YOLOv8n (320x320) detector shipped with nudenet."""
    return _find("nudenet", "nudenet", "320n.onnx")


def ppocr_det() -> Path:
    """PP-OCRv4 text detector shipped with rapidocr-onnxruntime."""
    return _find("rapidocr_onnxruntime", "rapidocr-onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")


def ppocr_rec() -> Path:
    """PP-OCRv4 text recognizer shipped with rapidocr-onnxruntime."""
    return _find("rapidocr_onnxruntime", "rapidocr-onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx")


PACKAGED: dict[str, Callable[[], Path]] = {
    "nudenet-yolov8n": nudenet_yolov8n,
    "ppocr-det": ppocr_det,
    "ppocr-rec": ppocr_rec,
}


def packaged_model(name: str) -> Path:
    """Path of the packaged model NAME (a key of PACKAGED)."""
    try:
        locate = PACKAGED[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}") from None
    return locate()
