"""Calibration data for data-driven importance: text files, JSONL, ready .npz tensors, or a default.

Text models: the default needs no file: sequences sampled from the unpruned model itself with a fixed
seed. It is a reasonable proxy for the model's own distribution, but real text (WikiText-2 valid, see
`calibration/`) is better; a warning says so.

Image models: a folder of images (letterboxed as ultralytics does), an .npz with an ``images`` array
[N, 3, S, S] in [0, 1], or by default the photos that installed packages ship plus seeded variants of
them (`eval.detection.reference_images`), with a warning that real images are better.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError, ModelLoadError

__all__ = ["load_tokenizer", "calibration_tokens", "calibration_images", "IMAGE_SUFFIXES"]

#: Files read from an image-folder calibration set.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger(__name__)


def load_tokenizer(model_dir: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ModelLoadError("transformers is needed for text calibration: pip install 'onnxdepth[hf]'") from None
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise ModelLoadError(f"no tokenizer found beside the model in {model_dir} ({type(exc).__name__})") from None


def _chunks(ids: np.ndarray, n_seq: int, seq_len: int, source: str) -> np.ndarray:
    if len(ids) < seq_len:
        raise InvalidArgumentError(f"--calib {source}: only {len(ids)} tokens, need at least {seq_len}")
    count = min(n_seq, len(ids) // seq_len)
    if count < n_seq:
        logger.warning("--calib %s: only %d sequences of %d tokens available (asked for %d)", source, count,
                       seq_len, n_seq)
    # Consecutive, non-overlapping windows from the start: deterministic and reproducible.
    return ids[: count * seq_len].reshape(count, seq_len).astype(np.int64)


def calibration_tokens(calib: str | None, model_path: Path, *, n_seq: int = 32, seq_len: int = 128,
                       seed: int = 0, session=None) -> np.ndarray:
    """Token sequences [n_seq, seq_len] for a causal LM / encoder from CALIB (or the default)."""
    model_dir = Path(model_path).parent
    if calib is None:
        logger.warning("no --calib given: sampling calibration text from the model itself (seed %d); "
                       "real data is better (e.g. --calib ../shared/data/wikitext-2/valid.txt)", seed)
        from .eval.generate import sample_sequences

        tokenizer = load_tokenizer(model_dir)
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
    if path.suffix == ".jsonl":
        texts = []
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidArgumentError(f"--calib {calib}: line {line_no} is not JSON with a 'text' field") from None
        text = "\n\n".join(texts)
    elif path.suffix in (".txt", ""):
        text = path.read_text()
    else:
        raise InvalidArgumentError(f"--calib {calib}: expected .txt, .jsonl or .npz")
    tokenizer = load_tokenizer(model_dir)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    return _chunks(ids, n_seq, seq_len, calib)


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
                raise InvalidArgumentError(f"--calib {file}: not a readable image ({type(exc).__name__})") from None
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
