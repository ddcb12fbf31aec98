"""Export Ultralytics YOLO models to ONNX, fully offline.

SRC is either the name of a model yaml bundled with ultralytics (``yolov5s.yaml``,
``yolov8n.yaml``: random weights, built locally) or a path to a ``.pt`` checkpoint
(an existing ``.yaml`` file path works too). Ultralytics writes its ``.onnx`` next to
the source or into the current directory, so the export runs inside a temporary
directory and the result is moved atomically onto OUT.
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
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz <= 0 or imgsz % 32:
        raise InvalidArgumentError(f"imgsz must be a positive multiple of 32, got {imgsz!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset <= 0):
        raise InvalidArgumentError(f"opset must be a positive integer, got {opset!r}")

    suffix = pathlib.Path(src).suffix.lower()
    src_path = pathlib.Path(src).expanduser()
    if suffix == ".pt":
        if not src_path.is_file():
            raise ExportError(f"checkpoint not found: {src}")
    elif suffix not in (".yaml", ".yml"):
        raise ExportError(f"SRC must be an ultralytics model yaml name or a .pt file, got {src!r}")
    _check_output(out)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ExportError("ultralytics is not installed: pip install 'onnxdepth[ultralytics]'") from exc

    # Reserve the destination first so an unwritable OUT fails before the (slow) export.
    try:
        fd, tmp_out = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputWriteError(f"cannot write to {out.parent}: {first_line(exc)}") from exc

    try:
        with tempfile.TemporaryDirectory(prefix="onnxdepth-yolo-") as tmp:
            workdir = pathlib.Path(tmp)
            if suffix == ".pt":
                model_arg = str(workdir / src_path.name)
                try:
                    shutil.copyfile(src_path, model_arg)
                except OSError as exc:
                    raise ExportError(f"cannot read checkpoint {src}: {first_line(exc)}") from exc
            elif src_path.is_file():
                model_arg = str(src_path.resolve())  # a user yaml: absolute, since we chdir
            else:
                model_arg = src  # a yaml bundled with ultralytics, resolved by name
            try:
                with _quiet(workdir):
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
            except BaseException as exc:
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
            try:
                shutil.copyfile(produced, tmp_out)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp_out, 0o666 & ~umask)  # mkstemp creates 0600
                os.replace(tmp_out, out)
            except OSError as exc:
                raise OutputWriteError(f"cannot write {out}: {first_line(exc)}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_out)
    return out
