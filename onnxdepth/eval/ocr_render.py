"""Seeded synthetic text for the OCR evaluation (and Taylor calibration): text lines and pages drawn with
Pillow in the fonts matplotlib ships, from a built-in word list and number formats, so the ground truth is
known exactly. See `ocr` for how they are scored."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["FONT_FILES", "PAGE_SIZE", "REC_DEFAULT_SAMPLES", "DET_DEFAULT_SAMPLES", "WORDS", "font_paths",
           "render_lines", "render_pages"]

#: Default numbers of rendered lines (recognition) and pages (detection).
REC_DEFAULT_SAMPLES = 200
DET_DEFAULT_SAMPLES = 50

#: Side of a rendered detection page, in pixels.
PAGE_SIZE = 640

#: Fonts that matplotlib ships (mpl-data/fonts/ttf); the renderers pick among those found.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf")

#: Common English words the renderers draw from (lower case; some are drawn capitalised).
WORDS = tuple("""
about above across after again against almost along also always among animal answer apple area around
autumn away back basket before begin behind below better between bird black blue board boat body book
bottle bread bridge bright brother brown build butter cabin candle carry castle center chair change cheap
check city class clean clock close cloud coffee cold color corner country cover dance dark daughter
desert dinner doctor dollar double dream drive early earth east easy engine enough evening every family
farmer father field figure finger finish flower follow forest friend front garden glass golden green
ground guitar happy harbor heavy help history horse house hundred hunter jacket journey jungle kitchen
ladder large laugh leather letter light listen little market matter measure metal middle minute mirror
money month morning mother mountain music narrow nature never night north number ocean office orange
paper party pencil people piano picture planet plant pocket police pretty purple question quick rabbit
radio rain record river road rocket round ruler salad school science season second seven shadow silver
simple sister small smile snow soft south spring square station stone story street strong summer sunday
supper table teacher thunder ticket tiger today tomato tower train travel tree under valley village
violet voice wagon water weather west window winter wonder world yellow young zebra
""".split())

#: Number formats the renderers draw (# is a random digit).
_NUMBER_FORMATS = ("#", "##", "###", "####", "#####", "######", "##.##", "#.###", "####-##-##", "##:##",
                   "###-####", "#,###", "$##.##", "##%")


# --------------------------------------------------------------------------------------------- fonts

def font_paths() -> list[Path]:
    """The TrueType fonts of ``FONT_FILES`` that an installed matplotlib ships (found without importing it)."""
    try:
        spec = importlib.util.find_spec("matplotlib")  # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    for directory in spec.submodule_search_locations:
        folder = Path(directory) / "mpl-data" / "fonts" / "ttf"
        found = [folder / name for name in FONT_FILES if (folder / name).is_file()]
        if found:
            return found
    return []


def _font(path: Path | None, size: int):
    """A FreeType font of ``size`` pixels from ``path``, or Pillow's built-in default font without one."""
    from PIL import ImageFont

    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size)


# ---------------------------------------------------------------------------------------------- text

def _token(rng: np.random.Generator) -> str:
    """One word (60 % lower case, 20 % capitalised) or one number (20 %) from a ``_NUMBER_FORMATS`` format."""
    draw = rng.random()
    if draw < 0.8:
        word = WORDS[int(rng.integers(len(WORDS)))]
        return word.capitalize() if draw >= 0.6 else word
    fmt = _NUMBER_FORMATS[int(rng.integers(len(_NUMBER_FORMATS)))]
    return "".join(str(int(rng.integers(10))) if ch == "#" else ch for ch in fmt)


def _text(rng: np.random.Generator, max_tokens: int) -> str:
    return " ".join(_token(rng) for _ in range(int(rng.integers(1, max_tokens + 1))))


def _check_count(count, what: str) -> int:
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise InvalidArgumentError(f"{what} must be a positive integer, got {count!r}")
    return int(count)


def _text_mask(text: str, font) -> np.ndarray:
    """Anti-aliased coverage [h, w] uint8 of ``text``, cropped to its line box.

    Columns: the ink's exact extent. Rows: the union of the text's ink and the ink of "Hg" in the same font
    (cap height to descender), so that a word without ascenders or descenders gets the line height an
    annotator would draw, not its x-height.
    """
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)  # vertical extent of getbbox is the ink's
    _, ref_top, _, ref_bottom = font.getbbox("Hg")
    top, bottom = min(top, ref_top), max(bottom, ref_bottom)
    pad = 4  # room for glyphs whose ink leaves the layout box (negative bearings)
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    mask = np.asarray(image)[pad:pad + bottom - top]  # rows of the line box
    cols = np.nonzero(mask.max(axis=0))[0]  # columns holding ink
    if cols.size == 0:
        return np.zeros((max(1, bottom - top), 1), dtype=np.uint8)
    return mask[:, cols[0]:cols[-1] + 1]


def _composite(canvas: np.ndarray, mask: np.ndarray, x: int, y: int, ink: int) -> None:
    """Blend ``ink`` into the float canvas [H, W] where ``mask`` (coverage, 0-255) is, top-left at (x, y)."""
    alpha = mask.astype(np.float32) / 255.0
    region = canvas[y:y + mask.shape[0], x:x + mask.shape[1]]  # rows are y, columns are x
    region *= 1.0 - alpha
    region += alpha * ink


def _finish(canvas: np.ndarray, rng: np.random.Generator, max_noise: float) -> np.ndarray:
    """Gaussian noise of a seeded sigma, then uint8 gray replicated to 3 channels [H, W, 3] (RGB = gray)."""
    sigma = rng.uniform(0.0, max_noise)
    canvas = canvas + rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    gray = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # channel axis last, as Pillow / OpenCV images


def render_lines(count: int = REC_DEFAULT_SAMPLES, seed: int = 0, fonts: Sequence[Path] | None = None
                 ) -> list[tuple[np.ndarray, str]]:
    """``count`` single-line text crops ``(image [H, W, 3] uint8 gray, text)``, deterministic for ``seed``.

    Each line holds 1-3 tokens (``_token``) joined by single spaces, drawn with a seeded font of
    ``fonts`` (default ``font_paths()``; Pillow's default font when none is found), size 20-48 px, dark
    ink (0 .. background - 110) on a light background (170-255), padding like a detector crop's (2 px to
    half the size left / right, 1 px to a quarter of the size above / below the font's ascent + descent),
    and Gaussian noise of sigma 0-4.
    """
    from PIL import Image, ImageDraw

    count = _check_count(count, "count")
    fonts = list(font_paths() if fonts is None else fonts) or [None]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        text = _text(rng, 3)
        size = int(rng.integers(20, 49))
        font = _font(fonts[int(rng.integers(len(fonts)))], size)
        background = int(rng.integers(170, 256))
        ink = int(rng.integers(0, background - 109))
        ascent, descent = font.getmetrics()
        left, _, right, _ = font.getbbox(text)
        pad_l, pad_r = (int(rng.integers(2, max(3, size // 2))) for _ in range(2))
        pad_t, pad_b = (int(rng.integers(1, max(2, size // 4))) for _ in range(2))
        image = Image.new("L", (right - left + pad_l + pad_r, ascent + descent + pad_t + pad_b), 0)
        ImageDraw.Draw(image).text((pad_l - left, pad_t), text, font=font, fill=255)  # top of ascent at pad_t
        canvas = np.full((image.height, image.width), float(background), dtype=np.float32)
        _composite(canvas, np.asarray(image), 0, 0, ink)
        out.append((_finish(canvas, rng, 4.0), text))
    return out


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def render_pages(count: int = DET_DEFAULT_SAMPLES, seed: int = 0, size: int = PAGE_SIZE,
                 fonts: Sequence[Path] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` pages ``(image [size, size, 3] uint8 gray, boxes [k, 4] float64 x1, y1, x2, y2)``.

    Each page (background 190-255, Gaussian noise of sigma 0-4) gets up to 4-10 text items of 1-2 tokens
    (``_token``), font size 16-48 px, dark ink (0 .. background - 120), at seeded positions: an item whose
    box grown by one font size (vertically) and two (horizontally) would touch another's grown box is
    redrawn elsewhere (20 tries, then skipped), so items stay separate lines. The boxes are each item's
    line box (``_text_mask``: the ink's columns, the rows from cap height to descender or the ink's if
    taller; ``x2`` / ``y2`` exclusive), in page pixels. Deterministic for ``seed``.
    """
    count = _check_count(count, "count")
    size = _check_count(size, "size")
    fonts = list(font_paths() if fonts is None else fonts) or [None]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        background = int(rng.integers(190, 256))
        canvas = np.full((size, size), float(background), dtype=np.float32)
        grown: list[tuple[int, int, int, int]] = []
        boxes = []
        for _ in range(int(rng.integers(4, 11))):
            text = _text(rng, 2)
            font_size = int(rng.integers(16, 49))
            mask = _text_mask(text, _font(fonts[int(rng.integers(len(fonts)))], font_size))
            ink = int(rng.integers(0, background - 119))
            h, w = mask.shape  # rows = height, columns = width
            if w + 8 > size or h + 8 > size:
                continue
            for _ in range(20):
                x = int(rng.integers(4, size - w - 3))
                y = int(rng.integers(4, size - h - 3))
                candidate = (x - 2 * font_size, y - font_size, x + w + 2 * font_size, y + h + font_size)
                if not _overlaps(candidate, grown):
                    _composite(canvas, mask, x, y, ink)
                    grown.append(candidate)
                    boxes.append((x, y, x + w, y + h))
                    break
        out.append((_finish(canvas, rng, 4.0), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    return out
