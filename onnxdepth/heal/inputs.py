"""Training and held-out inputs for healing models that are not language models: images for detectors and
PP-OCR models, sentences for encoders.

- Detectors: --calib (a folder or an .npz of images), else the photos installed packages ship; training images
  are seeded variants of them (random crops keeping 50-100% of each side, horizontal flips, rescales:
  `eval.detection.reference_images`), the held-out ones variants drawn with another seed, any image equal to a
  training image dropped.
- PP-OCR recognizers / detectors: text lines / pages rendered with seeded fonts and strings (or --calib),
  held-out ones with another seed (`importance.taylor_calibration.model_image_inputs`).
- Sentence encoders: the sentences of --calib (or the built-in ones), tokenized by the tokenizer beside the
  teacher; every K-th one held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import InvalidArgumentError

__all__ = ["InputBatches", "encoder_inputs", "image_inputs"]

#: Training images at most (each held in memory as float32; variants of the same photos beyond this add little).
MAX_INPUTS = 256
#: Training sentences at most (token rows are small: a text file's lines are all used up to this many).
MAX_SENTENCES = 4096
#: Seed offset of the held-out inputs (apart from the training ones, drawn with the run's seed).
HELD_OUT_SEED = 1000


@dataclass
class InputBatches:
    """Feeds {graph input: array} per batch, for training (cycled, reshuffled each epoch) and held out."""

    train: list[dict[str, np.ndarray]]  # one feed dict per training item (batch 1 each)
    held_out: list[dict[str, np.ndarray]]
    source: str
    stack: bool = True  # items of one shape can be batched together

    def train_batches(self, batch: int, seed: int):
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(self.train))
            for start in range(0, len(order), batch):
                yield self._join([self.train[i] for i in order[start:start + batch]])

    def held_out_batches(self, batch: int) -> list[dict[str, np.ndarray]]:
        return [self._join(self.held_out[start:start + batch]) for start in range(0, len(self.held_out), batch)]

    def _join(self, items: list[dict]) -> dict[str, np.ndarray]:
        """ITEMS as one batch (concatenated on axis 0) when they share shapes, else the first alone (text lines of
        different widths train one at a time)."""
        shapes = {tuple(v.shape for v in item.values()) for item in items}
        if not self.stack or len(shapes) > 1:
            return items[0]
        return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


def _split(items: list) -> list:
    return [{name: value[i:i + 1] for name, value in items.items()} for i in range(len(next(iter(items.values()))))]


def image_inputs(model: onnx.ModelProto, calib: str | None, *, count: int, held_out: int, seed: int) -> InputBatches:
    """Images for a one-image-input model (a detector or a PP-OCR model), preprocessed as `onnxdepth eval` does."""
    from ..graph.shapes import concrete_input_shapes
    from ..importance.taylor_calibration import image_kind, model_image_inputs

    shapes = concrete_input_shapes(model, None)
    if len(shapes) != 1:
        raise InvalidArgumentError("heal: an image model needs exactly one [1, 3, H, W] input")
    name, shape = next(iter(shapes.items()))
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] != 3:
        raise InvalidArgumentError(f"heal: the input {name} is not an image [1, 3, H, W] ({list(shape)})")
    kind = image_kind(model, shape)
    count = max(1, min(count, MAX_INPUTS))

    def draw(n: int, offset: int) -> list[np.ndarray]:
        return model_image_inputs(model, shape, calib, kind=kind, count=n, seed=seed + offset,
                                  photo_seed=seed + offset, flag="heal --calib")

    train = [np.asarray(image, dtype=np.float32) for image in draw(count, 0)]
    held = [np.asarray(image, dtype=np.float32) for image in draw(held_out + 8, HELD_OUT_SEED)]
    # Photos (and a --calib folder) start with the unaltered images in both draws: those stay training images.
    held = [image for image in held if not any(image.shape == t.shape and np.array_equal(image, t) for t in train)]
    if not held:
        raise InvalidArgumentError("heal --calib: no held-out image left that is not also a training image")
    items = [{name: _batched(image)} for image in train]
    held_items = [{name: _batched(image)} for image in held[:held_out]]
    return InputBatches(items, held_items, f"{kind} images ({calib or 'generated / packaged'}; seed {seed}): "
                                           f"{len(items)} training, {len(held_items)} held out (seed {seed + HELD_OUT_SEED})")


def _batched(image: np.ndarray) -> np.ndarray:
    """[3, H, W] or [n, 3, H, W] as [n, 3, H, W]."""
    return np.ascontiguousarray(image[None] if image.ndim == 3 else image)


def encoder_inputs(model: onnx.ModelProto, teacher_path: str, calib: str | None, *, count: int, held_out: int,
                   seq_len: int) -> InputBatches:
    """Tokenized sentences for a sentence encoder: every ceil(n / HELD_OUT)-th one held out."""
    from ..calibration import calibration_sentences, load_tokenizer
    from ..importance.taylor_calibration import _graph_inputs, _token_feeds

    sentences = calibration_sentences(calib, max(1, min(count, MAX_SENTENCES)) + held_out)
    if len(sentences) < held_out + 2:
        raise InvalidArgumentError(f"heal --calib: {len(sentences)} sentences; need more than the {held_out} held "
                                   "out (and at least 2 to train on)")
    tokenizer = load_tokenizer(Path(teacher_path).parent)
    inputs = _graph_inputs(model)
    stride = len(sentences) / held_out
    # Held-out sentence k sits at k * stride + half a stride: spread over the list.
    held_index = {int(k * stride + stride / 2) for k in range(held_out)}

    def feeds(texts: list[str]) -> list[dict]:
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        return _split(_token_feeds(inputs, encoded))

    train = feeds([s for i, s in enumerate(sentences) if i not in held_index])
    held = feeds([s for i, s in enumerate(sentences) if i in held_index])
    return InputBatches(train, held, f"sentences ({calib or 'built-in'}): {len(train)} training, {len(held)} held "
                                     f"out, padded to {seq_len} tokens")
