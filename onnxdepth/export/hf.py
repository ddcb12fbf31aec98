"""Export Hugging Face transformers models to ONNX with optimum, fully offline.

SRC is either a local Hugging Face model directory (``config.json`` + weights, as written by
``save_pretrained``) or a ``.gguf`` file. A GGUF file is de-quantized to float32 with
transformers (model and tokenizer), saved with ``save_pretrained`` into a temporary directory,
and that directory is exported.

The export runs in a temporary directory beside OUTDIR and is moved into place only once it has
succeeded, so a failure never leaves a half-written OUTDIR. ``model.onnx`` lands in OUTDIR with
the model's ``config.json`` (and ``generation_config.json``) and its tokenizer files.

Tasks: ``text-generation`` (inputs ``input_ids``, ``attention_mask``, ``position_ids``; output
``logits``), ``text-generation-with-past`` (adds ``past_key_values.N.key/value`` inputs and
``present.N.key/value`` outputs) and ``feature-extraction`` (encoder models: ``last_hidden_state``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator

from onnxdepth.errors import ExportError, InvalidArgumentError, OutputWriteError
from onnxdepth.fileio import clean_stale, temp_prefix, temporary
from onnxdepth.runtime import first_line

__all__ = ["export_hf", "TASKS"]

TASKS = ("text-generation", "text-generation-with-past", "feature-extraction")

_HINT = "pip install 'onnxdepth[hf]'"

# Files that make up a tokenizer; copied beside model.onnx when optimum did not save them itself.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

# Loggers of the libraries involved; muted during the export (failures are re-raised as ExportError).
_LOGGERS = ("transformers", "optimum", "torch.onnx", "huggingface_hub", "accelerate")


def _first_line(exc: BaseException) -> str:
    """`runtime.first_line` without optimum's boilerplate tail, at most 300 characters."""
    line = first_line(exc).split(" Please open an issue at", 1)[0]
    return line if len(line) <= 300 else line[:297] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute the loggers, progress bars and Python warnings of transformers/optimum/torch; restore afterwards."""
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
    bars_enabled = None
    tf_logging = None
    try:
        from transformers.utils import logging as tf_logging  # type: ignore[no-redef]

        bars_enabled = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - transformers without these helpers
        tf_logging = None
    hub_bars = None
    try:
        import huggingface_hub.utils as hub_utils

        hub_bars = not hub_utils.are_progress_bars_disabled()
        hub_utils.disable_progress_bars()
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub without these helpers
        hub_utils = None
    gguf_utils = None
    try:  # transformers' GGUF loader uses tqdm.auto directly, outside its progress-bar switch
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers layout, or gguf missing
        gguf_utils = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if gguf_utils is not None:
            gguf_utils.tqdm = gguf_tqdm
        for logger, level in saved:
            logger.setLevel(level)
        if tf_logging is not None and bars_enabled:
            tf_logging.enable_progress_bar()
        if hub_utils is not None and hub_bars:
            hub_utils.enable_progress_bars()


def _check_outdir(outdir: pathlib.Path, overwrite: bool) -> None:
    parent = outdir.parent
    if not parent.is_dir():
        raise OutputWriteError(f"parent of the output directory does not exist: {parent}")
    if outdir.exists() and not outdir.is_dir():
        raise OutputWriteError(f"output path exists and is not a directory: {outdir}")
    if (outdir / "model.onnx").exists() and not overwrite:
        raise OutputWriteError(
            f"{outdir / 'model.onnx'} already exists (pass overwrite=True / --overwrite to replace it)"
        )
    if not os.access(parent, os.W_OK) or (outdir.is_dir() and not os.access(outdir, os.W_OK)):
        raise OutputWriteError(f"output directory is not writable: {outdir if outdir.is_dir() else parent}")


def _check_src(src: str | os.PathLike) -> tuple[pathlib.Path, bool]:
    """Return (path, is_gguf) or raise ExportError naming what is wrong with SRC."""
    path = pathlib.Path(src).expanduser()
    if not path.exists():
        raise ExportError(f"model source not found: {src}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ExportError(f"SRC must be a Hugging Face model directory or a .gguf file, got {str(src)!r}")
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            if fh.read(4) == b"GGUF":
                return path, True
        raise ExportError(f"not a GGUF file (bad magic): {src}")
    if not (path / "config.json").is_file():
        raise ExportError(f"not a Hugging Face model directory (no config.json): {src}")
    return path, False


def _import_libs():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch  # noqa: F401
            import transformers  # noqa: F401
            from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise ExportError(
            f"Hugging Face export needs torch, transformers and optimum-onnx ({_first_line(exc)}): {_HINT}"
        ) from exc
    return main_export


def _gguf_to_hf(gguf: pathlib.Path, dest: pathlib.Path, src: str) -> None:
    """De-quantize GGUF into a float32 HF model + tokenizer saved in DEST."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as exc:
        raise ExportError(f"gguf is not installed (needed to read {gguf.name}): {_HINT}") from exc
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise ExportError(f"cannot load GGUF model {src}: {_first_line(exc)}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise ExportError(f"cannot load the tokenizer of GGUF model {src}: {_first_line(exc)}") from exc
    try:
        model.save_pretrained(str(dest))
        tokenizer.save_pretrained(str(dest))
    except OSError as exc:
        raise OutputWriteError(f"cannot write the temporary model directory {dest}: {_first_line(exc)}") from exc
    del model
    # A tokenizer read from GGUF keeps the .gguf itself as its "vocab file" and save_pretrained
    # copies the whole checkpoint as tokenizer.model; tokenizer.json carries the real tokenizer.
    for name in _TOKENIZER_FILES:
        path = dest / name
        if path.is_file() and (dest / "tokenizer.json").is_file():
            with open(path, "rb") as fh:
                if fh.read(4) == b"GGUF":
                    path.unlink()


def _copy_missing(src_dir: pathlib.Path, dst_dir: pathlib.Path) -> None:
    """Copy config and tokenizer files of SRC_DIR that the export did not write into DST_DIR."""
    for name in ("config.json", "generation_config.json", *_TOKENIZER_FILES):
        src = src_dir / name
        if src.is_file() and not (dst_dir / name).exists():
            shutil.copyfile(src, dst_dir / name)


def _place(staged: pathlib.Path, outdir: pathlib.Path) -> None:
    """Move the finished export STAGED onto OUTDIR: one rename when OUTDIR is absent or empty,
    else file by file with model.onnx (and its external data) last."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp creates 0700
    if not outdir.exists() or (outdir.is_dir() and not any(outdir.iterdir())):
        os.replace(staged, outdir)
        return
    produced = sorted(p.name for p in staged.iterdir())
    last = [n for n in produced if n == "model.onnx" or n.startswith("model.onnx")]
    # A stale external-data file from an earlier export would be picked up by the new model.onnx.
    for stale in ("model.onnx_data", "model.onnx.data"):
        if stale not in produced and (outdir / stale).is_file():
            os.unlink(outdir / stale)
    for name in [n for n in produced if n not in last] + sorted(last, key=lambda n: n == "model.onnx"):
        target = outdir / name
        if target.is_dir() and not (staged / name).is_dir():
            raise OutputWriteError(f"cannot write {target}: it is a directory")
        if (staged / name).is_dir() and target.exists():
            shutil.rmtree(target) if target.is_dir() else os.unlink(target)
        os.replace(staged / name, target)


def export_hf(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    task: str = "text-generation",
    opset: int | None = None,
    *,
    overwrite: bool = False,
    validate: bool = False,
) -> pathlib.Path:
    """Export SRC (HF model directory or ``.gguf`` file) with optimum into OUTDIR; return ``OUTDIR/model.onnx``.

    VALIDATE runs optimum's own PyTorch-vs-ONNX Runtime comparison (slower; a tolerance miss is
    only a warning in optimum, muted here). Raises InvalidArgumentError for a bad task/opset,
    OutputWriteError when OUTDIR cannot be written or already holds a model.onnx (without
    OVERWRITE), ExportError when transformers/optimum are missing, SRC is not a model, or the
    export fails.
    """
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset <= 0):
        raise InvalidArgumentError(f"opset must be a positive integer, got {opset!r}")
    outdir = pathlib.Path(outdir).expanduser()
    src_path, is_gguf = _check_src(src)
    _check_outdir(outdir, overwrite)
    main_export = _import_libs()

    try:
        clean_stale(outdir)
        work = pathlib.Path(tempfile.mkdtemp(prefix=temp_prefix(outdir), suffix=".tmp", dir=outdir.parent))
    except OSError as exc:
        raise OutputWriteError(f"cannot write to {outdir.parent}: {_first_line(exc)}") from exc
    try:
        with temporary(work):  # also removed by an expiring --timeout
            staged = work / "onnx"
            with _quiet():
                if is_gguf:
                    model_dir = work / "hf"
                    _gguf_to_hf(src_path, model_dir, str(src))
                else:
                    model_dir = src_path.resolve()
                try:
                    main_export(
                        str(model_dir),
                        str(staged),
                        task=task,
                        opset=opset,
                        device="cpu",
                        library_name="transformers",
                        local_files_only=True,
                        do_validation=validate,
                    )
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    msg = _first_line(exc).replace(str(model_dir), str(src))  # never name our temporary copy
                    raise ExportError(f"ONNX export of {str(src)!r} ({task}) failed: {msg}") from exc
            if not (staged / "model.onnx").is_file():
                found = sorted(p.name for p in staged.glob("*.onnx")) if staged.is_dir() else []
                raise ExportError(
                    f"ONNX export of {str(src)!r} ({task}) produced no model.onnx"
                    + (f" (got {', '.join(found)})" if found else "")
                )
            try:
                _copy_missing(model_dir, staged)
                _place(staged, outdir)
            except OSError as exc:
                raise OutputWriteError(f"cannot write {outdir}: {_first_line(exc)}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outdir / "model.onnx"
