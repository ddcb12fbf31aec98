"""Calibration data for data-driven importance: text files, JSONL, ready .npz tensors, or a default.

Text models: a text file is cut into windows spread evenly over the whole file (`WINDOW_LAYOUTS`; "head"
takes the leading windows back to back instead). The default needs no file: sequences sampled from the
unpruned model itself with a fixed seed. It is a reasonable proxy for the model's own distribution, but
real text (WikiText-2 valid, see `calibration/`) is better; a warning says so.

Image models: a folder of images (letterboxed as ultralytics does), an .npz with an ``images`` array
[N, 3, S, S] in [0, 1], or by default the photos that installed packages ship plus seeded variants of
them (`eval.detection.reference_images`), with a warning that real images are better.

OCR models (PP-OCR rec / det): a folder of text-line images / page images, an .npz with a model-ready
``images`` array, or by default lines / pages rendered by `eval.ocr` with a seed other than the
evaluation's, preprocessed exactly as `onnxdepth eval --task ocr` does.

Sentence encoders: one sentence per line of a .txt (WikiText headings skipped) or .jsonl ``text`` fields,
or by default the built-in sentences of `eval.embedding`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError
from .tokenizer_io import load_tokenizer

__all__ = ["EMBEDDED_TEXT", "embedded_text", "IMAGE_SUFFIXES", "OCR_CALIBRATION_SEED", "calibration_images", "calibration_ocr_lines",
           "calibration_ocr_pages", "calibration_sentences", "calibration_tokens", "fidelity_tokens", "FIDELITY_SEED_OFFSET", "held_out_tokens", "load_tokenizer",
           "samples_itself", "saved_calibration_tokens", "WINDOW_LAYOUTS"]

#: Files read from an image-folder calibration set.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger(__name__)

#: Renderer seed of the default OCR calibration data (plus --seed); `onnxdepth eval --task ocr` renders with 0.
OCR_CALIBRATION_SEED = 1000

_TOKENIZER_HINT = "text calibration reads the tokenizer saved beside the model (an optimum export directory)"


#: How text calibration windows are laid over the token stream: spread evenly over all of it (default), or
#: the first n_seq x seq_len tokens back to back (what onnxdepth did before; a few leading articles only).
WINDOW_LAYOUTS = ("spread", "head")


def _chunks(ids: np.ndarray, n_seq: int, seq_len: int, source: str, windows: str = "spread") -> np.ndarray:
    if windows not in WINDOW_LAYOUTS:
        raise InvalidArgumentError(f"calibration windows {windows!r}: expected one of {', '.join(WINDOW_LAYOUTS)}")
    if len(ids) < seq_len:
        raise InvalidArgumentError(f"--calib {source}: only {len(ids)} tokens, need at least {seq_len}")
    count = min(n_seq, len(ids) // seq_len)
    if count < n_seq:
        logger.warning("--calib %s: only %d sequences of %d tokens available (asked for %d)", source, count,
                       seq_len, n_seq)
    if windows == "head":
        # Consecutive, non-overlapping windows from the start.
        return ids[: count * seq_len].reshape(count, seq_len).astype(np.int64)
    # Window i starts at i * (len - seq_len) / (count - 1): first at 0, last ending at the final token,
    # evenly spaced in between (spacing >= seq_len because count * seq_len <= len, so none overlap). A
    # calibration set of a few thousand tokens then samples the whole file, not its first article or two.
    starts = np.linspace(0, len(ids) - seq_len, count).astype(np.int64)  # count 1: [0]
    return np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int64)


#: The default text of a model that cannot sample its own (a sentence encoder): the English prose of the
#: Python documentation topics that every Python ships (`pydoc_data.topics`, about 100k tokens).
EMBEDDED_TEXT = "the Python documentation (pydoc_data)"


@functools.lru_cache(maxsize=4)
def samples_itself(model_path: str) -> bool:
    """True if the model at MODEL_PATH is a causal LM (a `logits` output) that default calibration text can be
    sampled from; False for encoders, which calibrate on `EMBEDDED_TEXT` by default."""
    import onnx

    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read {model_path}: {exc}") from exc
    return any(o.name == "logits" for o in graph.output)


def embedded_text() -> str:
    """The text of `EMBEDDED_TEXT`: every topic of pydoc_data, in name order."""
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics))


def _text_ids(calib: str | None, model_path: Path) -> np.ndarray:
    """The token ids of a .txt or .jsonl calibration file (None: `EMBEDDED_TEXT`), tokenized whole by the
    model's tokenizer."""
    path = Path(calib) if calib is not None else None
    if path is None:
        text = embedded_text()
    elif path.suffix == ".jsonl":
        texts = []
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidArgumentError(f"--calib {calib}: line {line_no} is not JSON with a 'text' field") from exc
        text = "\n\n".join(texts)
    elif path.suffix in (".txt", ""):
        text = path.read_text()
    else:
        raise InvalidArgumentError(f"--calib {calib}: expected .txt, .jsonl or .npz")
    tokenizer = load_tokenizer(Path(model_path).parent, hint=_TOKENIZER_HINT)
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def calibration_tokens(calib: str | None, model_path: Path, *, n_seq: int = 32, seq_len: int = 128,
                       seed: int = 0, session=None, windows: str = "spread") -> np.ndarray:
    """Token sequences [n_seq, seq_len] for a causal LM / encoder from CALIB (or the default).

    Text files are tokenized whole and cut into N_SEQ windows of SEQ_LEN tokens laid out by WINDOWS
    (`WINDOW_LAYOUTS`); an .npz is taken as it is (its first N_SEQ rows, first SEQ_LEN columns)."""
    model_dir = Path(model_path).parent
    if calib is None and not samples_itself(str(model_path)):
        logger.warning("no --calib given: calibrating on %s; real text from the deployment domain is better (e.g. "
                       "--calib ../shared/data/wikitext-2/valid.txt)", EMBEDDED_TEXT)
        return _chunks(_text_ids(None, model_path), n_seq, seq_len, EMBEDDED_TEXT, windows)
    if calib is None:
        logger.warning("no --calib given: sampling calibration text from the model itself (seed %d); "
                       "real data is better (e.g. --calib ../shared/data/wikitext-2/valid.txt)", seed)
        from .eval.generate import sample_sequences

        tokenizer = load_tokenizer(model_dir, hint=_TOKENIZER_HINT)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
        return sample_sequences(session if session is not None else model_path, start, n_seq, seq_len, seed=seed)
    path = Path(calib)
    if not path.exists():
        raise InvalidArgumentError(f"--calib {calib}: no such file")
    if path.suffix == ".npz":
        data = np.load(path)
        if "input_ids" not in data:
            raise InvalidArgumentError(f"--calib {calib}: .npz needs an 'input_ids' array")
        return np.asarray(data["input_ids"], dtype=np.int64)[:n_seq, :seq_len]
    ids = _text_ids(calib, model_path)
    return _chunks(ids, n_seq, seq_len, calib, windows)


def held_out_tokens(calib: str | None, model_path: Path, *, n_seq: int, seq_len: int, count: int,
                    seed: int = 0) -> np.ndarray:
    """COUNT token windows [count, seq_len] from CALIB that share no token with `calibration_tokens(calib, ...,
    n_seq=N_SEQ)`, for checks on data the selection never saw; the calibration windows stay what they are.

    Text: windows centred between consecutive spread calibration windows (their spacing is at least
    2 x SEQ_LEN, or there is no room and this is refused). An .npz: the rows after the first N_SEQ. No
    CALIB: sequences sampled from the model with another seed.
    """
    if count <= 0:
        return np.zeros((0, seq_len), dtype=np.int64)
    if calib is None and samples_itself(str(model_path)):
        return calibration_tokens(None, model_path, n_seq=count, seq_len=seq_len, seed=seed + 1)
    if calib is not None and Path(calib).suffix == ".npz":
        every = calibration_tokens(calib, model_path, n_seq=n_seq + count, seq_len=seq_len)
        if len(every) <= n_seq:
            raise InvalidArgumentError(f"--calib {calib}: no rows left for held-out checks after {n_seq} sequences")
        return every[n_seq:]
    ids = _text_ids(calib, model_path)
    spacing, windows = _window_spacing(ids, n_seq, seq_len, calib or EMBEDDED_TEXT)
    # Gap k lies between calibration windows k and k + 1.
    return _gap_windows(ids, windows, seq_len, spacing, _fit_gaps(windows, count))


#: Seed offset of everything the held-out fidelity check draws (sampled text, photo variants, rendered lines),
#: apart from the calibration (seed) and the fits' held-out windows (seed + 1).
FIDELITY_SEED_OFFSET = 2


def fidelity_tokens(calib: str | None, model_path: Path, *, n_seq: int, seq_len: int, count: int,
                    fits_count: int, seed: int = 0) -> np.ndarray:
    """Up to COUNT token windows [k, seq_len] for the held-out fidelity check of a prune: sharing no token
    with the calibration windows (`calibration_tokens(calib, ..., n_seq=N_SEQ)`) nor with the FITS_COUNT
    held-out windows the fits and the run choice saw (`held_out_tokens`). Text: windows centred in the gaps
    between calibration windows that the fits' windows leave free (InvalidArgumentError when there are none);
    an .npz: the rows after those; no CALIB: sequences sampled from the model with seed + 2."""
    if calib is None and samples_itself(str(model_path)):
        return calibration_tokens(None, model_path, n_seq=count, seq_len=seq_len, seed=seed + FIDELITY_SEED_OFFSET)
    if calib is not None and Path(calib).suffix == ".npz":
        every = calibration_tokens(calib, model_path, n_seq=n_seq + fits_count + count, seq_len=seq_len)
        if len(every) <= n_seq + fits_count:
            raise InvalidArgumentError(f"--calib {calib}: no rows left for the fidelity check after {n_seq} "
                                       f"calibration and {fits_count} held-out sequences")
        return every[n_seq + fits_count:]
    ids = _text_ids(calib, model_path)
    spacing, windows = _window_spacing(ids, n_seq, seq_len, calib or EMBEDDED_TEXT)
    taken = set(_fit_gaps(windows, fits_count).tolist()) if fits_count > 0 else set()
    free = np.array([gap for gap in range(windows - 1) if gap not in taken], dtype=np.int64)
    if len(free) == 0:
        raise InvalidArgumentError(f"--calib {calib}: no gap between the {windows} calibration windows is left for "
                                   "the fidelity check (fewer --calib-sequences, or a longer file)")
    # COUNT of the free gaps, evenly over them.
    picked = free[np.unique(np.linspace(0, len(free) - 1, min(count, len(free))).round().astype(np.int64))]
    return _gap_windows(ids, windows, seq_len, spacing, picked)


def _window_spacing(ids: np.ndarray, n_seq: int, seq_len: int, calib: str) -> tuple[float, int]:
    """(spacing of the spread calibration windows' starts, their count), refused when no window fits between
    two consecutive ones."""
    windows = min(n_seq, len(ids) // seq_len)
    spacing = (len(ids) - seq_len) / max(windows - 1, 1)
    if windows < 2 or spacing < 2 * seq_len:
        raise InvalidArgumentError(f"--calib {calib}: too short for held-out windows between {windows} calibration "
                                   f"windows of {seq_len} tokens")
    return spacing, windows


def _fit_gaps(windows: int, count: int) -> np.ndarray:
    """The gaps (gap k: between calibration windows k and k + 1) whose centres hold the fits' COUNT held-out
    windows, evenly over all WINDOWS - 1 gaps."""
    return np.unique(np.linspace(0, windows - 2, min(count, windows - 1)).round().astype(np.int64))


def _gap_windows(ids: np.ndarray, windows: int, seq_len: int, spacing: float, gaps: np.ndarray) -> np.ndarray:
    """One window of SEQ_LEN tokens centred in each of GAPS: it starts half a spacing after calibration window
    k, so it ends at least seq_len / 2 before window k + 1 starts."""
    starts = (np.linspace(0, len(ids) - seq_len, windows)[gaps] + spacing / 2 - seq_len / 2).astype(np.int64)
    return np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int64)


def saved_calibration_tokens(calib: str, model_path: Path, out: Path, *, n_seq: int, seq_len: int,
                             windows: str = "spread") -> str:
    """OUT, an .npz of CALIB's `calibration_tokens` (``input_ids``), written the first time only: a run that
    resumes reads exactly the tokens it started with."""
    out = Path(out)
    if not out.exists():
        tokens = calibration_tokens(calib, model_path, n_seq=n_seq, seq_len=seq_len, windows=windows)
        np.savez(out, input_ids=tokens)
    return str(out)


def calibration_images(calib: str | None, size: int, *, count: int = 24, seed: int = 0) -> np.ndarray:
    """Calibration images [count, 3, size, size] float32 in [0, 1] from CALIB (a folder or .npz) or the default."""
    from .eval.detection import letterbox, reference_images

    if calib is None:
        logger.warning("no --calib given: calibrating on the photos installed packages ship (and seeded variants "
                       "of them); a folder of real images from the deployment domain is better")
        return np.stack(reference_images(count, size, seed=seed)).astype(np.float32)
    path = Path(calib)
    if not path.exists():
        raise InvalidArgumentError(f"--calib {calib}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidArgumentError(f"--calib {calib}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        images = []
        for file in files[:count]:
            try:
                images.append(letterbox(file, size)[0])
            except Exception as exc:
                raise InvalidArgumentError(f"--calib {file}: not a readable image ({type(exc).__name__})") from exc
        return np.stack(images).astype(np.float32)
    if path.suffix == ".npz":
        data = np.load(path)
        if "images" not in data:
            raise InvalidArgumentError(f"--calib {calib}: .npz needs an 'images' array [N, 3, {size}, {size}]")
        images = np.asarray(data["images"], dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise InvalidArgumentError(f"--calib {calib}: 'images' has shape {list(images.shape)}, "
                                       f"expected [N, 3, {size}, {size}]")
        return images[:count]
    raise InvalidArgumentError(f"--calib {calib}: expected a folder of images or an .npz for an image model")


def _image_files(calib: str) -> list[Path]:
    files = sorted(p for p in Path(calib).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgumentError(f"--calib {calib}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return files


def _read_bgr(file: Path) -> np.ndarray:
    """FILE as [H, W, 3] uint8 in BGR order (rapidocr reads images with OpenCV, so the models expect BGR)."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for unreadable files
        raise InvalidArgumentError(f"--calib {file}: not a readable image ({type(exc).__name__})") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])  # channel axis last: RGB -> BGR


def _npz_images(calib: str, count: int, *, height: int | None, what: str) -> list[np.ndarray]:
    """Model-ready images [1, 3, H, W] from the ``images`` array [N, 3, H, W] of an .npz (H = HEIGHT if given)."""
    data = np.load(calib)
    if "images" not in data:
        raise InvalidArgumentError(f"--calib {calib}: .npz needs an 'images' array of preprocessed {what}")
    images = np.asarray(data["images"], dtype=np.float32)
    # [N, 3, H, W]: channels on axis 1, the text-line height (rec) on axis 2.
    if images.ndim != 4 or images.shape[1] != 3 or (height is not None and images.shape[2] != height):
        expected = f"[N, 3, {height}, W]" if height is not None else "[N, 3, H, W]"
        raise InvalidArgumentError(f"--calib {calib}: 'images' has shape {list(images.shape)}, expected {expected}")
    return [images[i:i + 1] for i in range(min(count, len(images)))]


def calibration_ocr_lines(calib: str | None, *, count: int = 32, seed: int = 0, height: int = 48,
                          width: int | None = None) -> list[np.ndarray]:
    """Text-line inputs [1, 3, HEIGHT, W] for a PP-OCR recognizer, as `eval.ocr.ocr_recognition` feeds them.

    CALIB: a folder of line images or an .npz ``images`` array (already preprocessed); by default COUNT
    lines rendered with seed ``OCR_CALIBRATION_SEED + SEED`` (the evaluation renders with seed 0). Each
    line goes through ``rec_preprocess`` (WIDTH: the model's fixed input width, if any), so widths differ.
    """
    from .eval.ocr import rec_preprocess, render_lines

    if calib is not None:
        images, ready = _ocr_calibration_files(calib, count, height=height, what="text lines")
        return images if ready else [rec_preprocess(line, height, width) for line in images]
    return [rec_preprocess(image, height, width) for image, _ in render_lines(count, OCR_CALIBRATION_SEED + seed)]


def calibration_ocr_pages(calib: str | None, *, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Page inputs [1, 3, H, W] for a PP-OCR (DB) detector, as `eval.ocr.ocr_detection` feeds them.

    CALIB: a folder of page images or an .npz ``images`` array (already preprocessed); by default COUNT
    pages rendered with seed ``OCR_CALIBRATION_SEED + SEED``. Each page goes through ``det_preprocess``
    (short side up to 736, sides multiples of 32) in BGR order, as the evaluation does.
    """
    from .eval.ocr import det_preprocess, render_pages

    if calib is not None:
        images, ready = _ocr_calibration_files(calib, count, height=None, what="pages")
        return images if ready else [det_preprocess(page) for page in images]
    rendered = render_pages(count, OCR_CALIBRATION_SEED + seed)
    return [det_preprocess(np.ascontiguousarray(image[:, :, ::-1])) for image, _ in rendered]  # RGB -> BGR


def _ocr_calibration_files(calib: str, count: int, *, height: int | None, what: str) -> tuple[list[np.ndarray], bool]:
    """(images, preprocessed) from --calib: an .npz's ``images`` (ready model inputs, True) or up to COUNT
    BGR images of a folder (to preprocess, False)."""
    path = Path(calib)
    if not path.exists():
        raise InvalidArgumentError(f"--calib {calib}: no such file or folder")
    if path.suffix == ".npz":
        return _npz_images(calib, count, height=height, what=what), True
    if not path.is_dir():
        raise InvalidArgumentError(f"--calib {calib}: expected a folder of {what.removesuffix('s')} images or an .npz")
    return [_read_bgr(file) for file in _image_files(calib)[:count]], False


#: WikiText section headings (" = Title = "), not sentences.
_HEADING = re.compile(r"^=+ .* =+$")


def calibration_sentences(calib: str | None, count: int = 32) -> list[str]:
    """Up to COUNT sentences for a sentence encoder: the non-empty, non-heading lines of a .txt (e.g.
    WikiText-2 valid) or the ``text`` fields of a .jsonl; by default the built-in sentences of
    `eval.embedding` (with a warning: `onnxdepth eval --task embedding` embeds them too by default)."""
    if calib is None:
        from .eval.embedding import DEFAULT_SENTENCES

        logger.warning("no --calib given: calibrating on the built-in sentences, which `eval --task embedding` "
                       "also uses by default; real text is better (e.g. --calib ../shared/data/wikitext-2/valid.txt)")
        return list(DEFAULT_SENTENCES[:count])
    path = Path(calib)
    if not path.is_file():
        raise InvalidArgumentError(f"--calib {calib}: no such file")
    if path.suffix not in (".txt", ".jsonl", ""):
        raise InvalidArgumentError(f"--calib {calib}: expected a .txt (one sentence per line) or .jsonl for an encoder")
    sentences: list[str] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if path.suffix == ".jsonl" and line.strip():
            try:
                line = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidArgumentError(f"--calib {calib}: line {line_no} is not JSON with a 'text' field") from exc
        line = line.strip()
        if line and not _HEADING.match(line):
            sentences.append(line)
            if len(sentences) == count:
                break
    if not sentences:
        raise InvalidArgumentError(f"--calib {calib}: no sentences (non-empty lines) in the file")
    return sentences
