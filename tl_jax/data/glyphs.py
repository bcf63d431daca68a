"""Printed characters rendered from fonts that ship with the installed packages: the quickstart's source task.

What makes ImageNet a good source is that it is broad and far larger than any target. The
offline stand-in has the same shape: 62 classes (0-9, A-Z, a-z) in 21 typefaces (matplotlib's
DejaVu, STIX and Computer Modern text faces and Pillow's default font: the same set on every
machine), each example drawn with a random rotation, shear, stretch and stroke width; the
target, scikit-learn's 1,797 handwritten digits, is related but different (printed vs written,
and 52 of the 62 classes are letters).

Each glyph is drawn at 64x64, cropped to its ink, fitted into a 32x32 box and summed over 4x4
blocks into 8x8 counts 0..16: the recipe that turned the UCI digits' 32x32 bitmaps into
scikit-learn's 8x8 images, so source and target share their look but not their writers. A finer
``grid`` (16 or 32) fits the ink into 64x64 and sums smaller blocks, scaled to the same 0..16, for
studies where every stage of a network should still see a spatial map.
Splits: ``train`` is the first 90% of the rendered examples, ``test`` the rest, ``all`` both;
slices apply on top (``train[:50%]``). ``classes`` keeps some characters, relabelled ``0..k-1`` in
the given order; ``labels_per_class`` and ``shift`` (``tl_jax.data.shifts``) as for the digits.
"""
from __future__ import annotations

import concurrent.futures
import functools
import glob
import os
import string
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tl_jax.data import splits, subset
from tl_jax.data.digits import counts_source
from tl_jax.data.pipeline import ArraySource

CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase
TRAIN_FRACTION = 0.9
NUM_EXAMPLES = 20_000
# Text faces among matplotlib's bundled fonts (the others are symbol and math-extension fonts).
_FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
          "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
          "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
          "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
          "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf")
_CANVAS, _SIZE = 64, 40


def fonts() -> list[ImageFont.FreeTypeFont]:
    """The typefaces: matplotlib's bundled text faces that are present, and Pillow's default font."""
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    found = {os.path.basename(p): p for p in glob.glob(os.path.join(folder, "*.ttf"))}
    return [ImageFont.truetype(found[f], _SIZE) for f in _FACES if f in found] + \
        [ImageFont.load_default(size=_SIZE)]


def _draw(font: ImageFont.FreeTypeFont, char: str, stroke: int) -> Image.Image:
    img = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(img).text((_CANVAS / 2, _CANVAS / 2), char, fill=255, font=font, anchor="mm",
                             stroke_width=stroke, stroke_fill=255)
    return img


GRIDS = (8, 16, 32)


def coarsen(glyph: np.ndarray, grid: int = 8) -> np.ndarray:
    """A binary glyph -> cropped to its ink -> fitted into a box (32x32 for the 8x8 grid, else 64x64) ->
    block counts scaled to 0..16: ``(grid, grid)`` uint8."""
    if grid not in GRIDS:
        raise ValueError(f"glyphs render on a grid of {GRIDS}, not {grid}")
    box_side = 32 if grid == 8 else 64
    block = box_side // grid
    ys, xs = np.nonzero(glyph)
    if len(ys) == 0:
        return np.zeros((grid, grid), np.uint8)
    ink = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = ink.shape
    scale = box_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = np.asarray(Image.fromarray(ink.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)) > 127
    box = np.zeros((box_side, box_side), bool)
    top, left = (box_side - nh) // 2, (box_side - nw) // 2
    box[top:top + nh, left:left + nw] = fitted
    counts = box.reshape(grid, block, grid, block).sum(axis=(1, 3))
    return (counts * (16 // block ** 2)).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def render(num_examples: int = NUM_EXAMPLES, seed: int = 0, grid: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, grid, grid) uint8 0..16, labels (N,) int32)``, a function of the arguments and the fonts.

    Each (face, character, stroke) is drawn once; examples are random affine warps of those
    drawings (rotation within 15 degrees, shear within 0.3, horizontal stretch 0.75-1.25),
    rendered on a thread per core (Pillow releases the GIL while it warps).
    """
    faces = fonts()
    strokes = (0, 1)
    bases = [[[_draw(f, c, s) for s in strokes] for c in CHARACTERS] for f in faces]
    rng = np.random.default_rng((seed, 7))
    labels = rng.integers(0, len(CHARACTERS), num_examples).astype(np.int32)
    face = rng.integers(0, len(faces), num_examples)
    stroke = rng.integers(0, len(strokes), num_examples)
    angle, shear = np.deg2rad(rng.uniform(-15, 15, num_examples)), rng.uniform(-0.3, 0.3, num_examples)
    stretch = rng.uniform(0.75, 1.25, num_examples)
    # PIL maps output pixels back to input pixels: invert A = [[cos*stretch, shear - sin], [sin, cos]].
    a, b, c, d = np.cos(angle) * stretch, shear - np.sin(angle), np.sin(angle), np.cos(angle)
    det = a * d - b * c
    inv = np.stack([d, -b, -c, a], axis=1) / det[:, None]
    half = _CANVAS / 2
    shift = np.stack([half - half * (inv[:, 0] + inv[:, 1]), half - half * (inv[:, 2] + inv[:, 3])], axis=1)

    def one(i: int) -> np.ndarray:
        glyph = bases[face[i]][labels[i]][stroke[i]].transform(
            (_CANVAS, _CANVAS), Image.AFFINE, (inv[i, 0], inv[i, 1], shift[i, 0], inv[i, 2], inv[i, 3], shift[i, 1]),
            Image.BILINEAR)
        return coarsen(np.asarray(glyph) > 127, grid)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        images = np.stack(list(pool.map(one, range(num_examples), chunksize=256)))
    return images, labels


def load(split: str = "train", *, num_examples: int = NUM_EXAMPLES, data_seed: int = 0, size: int = 8, grid: int = 8,
         classes: Sequence[int] | None = None, labels_per_class: int | None = None, label_seed: int = 0,
         shift: str = "") -> ArraySource:
    """The glyphs of ``split`` as ``size``-pixel gray RGB images rendered on a ``grid``."""
    images, labels = render(int(num_examples), int(data_seed), int(grid))
    base, _, _ = splits.parse(split)
    n_train = int(round(TRAIN_FRACTION * len(labels)))
    ranges = {"train": (0, n_train), "test": (n_train, len(labels)), "all": (0, len(labels))}
    if base not in ranges:
        raise ValueError(f"glyphs has splits {sorted(ranges)}, not {base!r}")
    lo, hi = ranges[base]
    _, a, b = splits.slice_range(split, hi - lo)
    index = np.arange(lo + a, lo + b)
    names = tuple(CHARACTERS)
    if classes is not None:
        index, relabelled, names = subset.keep_classes(index, labels, classes, names, "glyphs")
    else:
        relabelled = labels
    if labels_per_class is not None:
        index = subset.per_class(index, relabelled, int(labels_per_class), int(label_seed), "glyphs", split)
    return counts_source("glyphs", images, relabelled, index, names, split=split, shift=shift, size=size)
