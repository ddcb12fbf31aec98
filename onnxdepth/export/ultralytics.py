"""Export Ultralytics YOLO models to ONNX, fully offline.

SRC is either the name of a model yaml bundled with ultralytics (``yolov5s.yaml``,
``yolov8n.yaml``: random weights, built locally) or a path to a ``.pt`` checkpoint
(an existing ``.yaml`` file path works too). Ultralytics writes its ``.onnx`` next to
the source or into the current directory, so the export runs inside a temporary
directory and the result is written atomically onto OUT (`fileio.write_atomic`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator

from onnxdepth.errors import ExportError, InvalidArgumentError, OutputWriteError
from onnxdepth.fileio import write_atomic
from onnxdepth.graph.io import check_output_path
from onnxdepth.runtime import first_line

__all__ = ["export_ultralytics"]


@contextlib.contextmanager
def _quiet(workdir: pathlib.Path) -> Iterator[None]:
    """chdir into WORKDIR and mute ultralytics' logger and Python warnings; restore both afterwards."""
    logger = logging.getLogger("ultralytics")
    level = logger.level
    cwd = os.getcwd()
    os.chdir(workdir)
    logger.setLevel(logging.CRITICAL + 1)  # failures are re-raised as ExportError anyway
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        os.chdir(cwd)


def _check_output(out: pathlib.Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        raise OutputWriteError(f"output directory does not exist: {parent}")
    if out.is_dir():
        raise OutputWriteError(f"output path is a directory: {out}")
    if not os.access(parent, os.W_OK):
        raise OutputWriteError(f"output directory is not writable: {parent}")


def _check_arguments(src: str, imgsz: int, opset: int | None) -> None:
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz <= 0 or imgsz % 32:
        raise InvalidArgumentError(f"imgsz must be a positive multiple of 32, got {imgsz!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset <= 0):
        raise InvalidArgumentError(f"opset must be a positive integer, got {opset!r}")
    suffix = pathlib.Path(src).suffix.lower()
    if suffix == ".pt":
        if not pathlib.Path(src).expanduser().is_file():
            raise ExportError(f"checkpoint not found: {src}")
    elif suffix not in (".yaml", ".yml"):
        raise ExportError(f"SRC must be an ultralytics model yaml name or a .pt file, got {src!r}")


def _model_argument(src: str, workdir: pathlib.Path) -> str:
    """What YOLO() is given: a copy of a checkpoint in WORKDIR, an absolute user yaml, or a bundled yaml name."""
    src_path = pathlib.Path(src).expanduser()
    if src_path.suffix.lower() == ".pt":
        model_arg = str(workdir / src_path.name)
        try:
            shutil.copyfile(src_path, model_arg)
        except OSError as exc:
            raise ExportError(f"cannot read checkpoint {src}: {first_line(exc)}") from exc
        return model_arg
    if src_path.is_file():
        return str(src_path.resolve())  # a user yaml: absolute, since we chdir
    return src  # a yaml bundled with ultralytics, resolved by name


def _refuse_foreign_pickles(model_arg: str) -> None:
    """A .pt checkpoint is a pickle, and YOLO() unpickles it with torch.load(weights_only=False): any code in
    it would run. First load it the restricted way, ultralytics' torch_safe_load(safe_only=True):
    torch.load(weights_only=True) against its allow-list of known model classes, which raises TypeError on
    anything else. What passes holds only those classes, so YOLO()'s own load of the same (private) copy runs
    nothing else. Older ultralytics (no safe_only) or torch (< 2.6, no checkpoint scan: ultralytics then falls
    back to a full load) cannot load restricted; there the --help warning is all there is."""
    if not model_arg.endswith(".pt"):
        return
    import inspect

    from ultralytics.nn import tasks

    if "safe_only" in inspect.signature(tasks.torch_safe_load).parameters and getattr(tasks, "_SafeLoad", None) \
            is not None and tasks._SafeLoad.SUPPORTED:
        tasks.torch_safe_load(model_arg, safe_only=True)


def _export_in(workdir: pathlib.Path, src: str, imgsz: int, opset: int | None, simplify: bool) -> pathlib.Path:
    """Run ultralytics' ONNX export of SRC inside WORKDIR; the .onnx file it produced."""
    from ultralytics import YOLO

    model_arg = _model_argument(src, workdir)
    try:
        with _quiet(workdir):
            _refuse_foreign_pickles(model_arg)
            try:
                model = YOLO(model_arg, verbose=False)
            except FileNotFoundError as exc:
                raise ExportError(
                    f"unknown model {src!r}: not a yaml bundled with ultralytics nor an existing file"
                ) from exc
            result = model.export(
                format="onnx", imgsz=imgsz, opset=opset, simplify=simplify,
                device="cpu", verbose=False,
            )
    except (KeyboardInterrupt, SystemExit, ExportError):
        raise
    except BaseException as exc:  # ultralytics raises anything; the message is the user's answer
        msg = first_line(exc).replace(model_arg, src)  # never name our temporary copy
        msg = msg.split("ERROR", 1)[-1].lstrip(" ❌️") if msg.startswith("ERROR") else msg
        raise ExportError(f"ultralytics export of {src!r} failed: {msg}") from exc
    produced = pathlib.Path(str(result)) if result else None
    if produced is not None and not produced.is_absolute():
        produced = workdir / produced
    if produced is None or not produced.is_file():
        found = sorted(workdir.glob("*.onnx"))
        if len(found) != 1:
            raise ExportError(f"ultralytics export of {src!r} produced no ONNX file")
        produced = found[0]
    return produced


def export_ultralytics(
    src: str,
    out: pathlib.Path,
    imgsz: int = 640,
    opset: int | None = None,
    simplify: bool = False,
) -> pathlib.Path:
    """Export SRC (bundled yaml name or ``.pt`` path) to ONNX at OUT and return OUT.

    Raises InvalidArgumentError for a bad imgsz/opset, OutputWriteError when OUT cannot be
    written, ExportError when ultralytics is missing, SRC is unknown, or the export fails.
    """
    out = pathlib.Path(out)
    src = str(src)
    _check_arguments(src, imgsz, opset)
    _check_output(out)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics  # noqa: F401 - fail before any work when it is missing
    except ImportError as exc:
        raise ExportError("ultralytics is not installed: pip install 'onnxdepth[ultralytics]'") from exc

    check_output_path(out)  # proves OUT writable before the (slow) export
    with tempfile.TemporaryDirectory(prefix="onnxdepth-yolo-") as tmp:
        produced = _export_in(pathlib.Path(tmp), src, imgsz, opset, simplify)
        try:
            data = produced.read_bytes()
        except OSError as exc:
            raise ExportError(f"ultralytics export of {src!r}: cannot read {produced.name}: {first_line(exc)}") \
                from exc
        write_atomic(out, data)
    return out
