"""scikit-learn's 8x8 digits as 32x32 RGB images: an offline dataset for the quickstart.

1,797 images, no download. ``classes`` keeps some digits and relabels them ``0..k-1`` in the
given order (e.g. pretrain on 0-4, transfer to 5-9); ``labels_per_class`` keeps only that many
examples of each class, chosen with ``label_seed`` (few-label transfer). Splits: ``train`` is
the first 80% of a fixed permutation (``split_seed``), ``test`` the rest, ``all`` everything;
TFDS-style slices apply on top (``train[:90%]``). Flipping is off by default: digits are not
mirror-symmetric.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import numpy as np

from tl_jax.data import shifts, splits, subset
from tl_jax.data.pipeline import ArraySource

TRAIN_FRACTION = 0.8


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, 8, 8)`` values 0..16 -> uint8 ``(N, size, size, 3)`` gray RGB (PIL bilinear)."""
    from PIL import Image

    gray = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    return np.repeat(out[..., None], 3, axis=-1)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(1797, 8, 8)`` float64 counts 0..16 and int64 labels.

    Parsed from the ``digits.csv.gz`` that scikit-learn ships, as ``sklearn.datasets.load_digits`` parses it,
    without importing scikit-learn: that import costs about 1.4 s in every process that trains on digits.
    Where the file is not found, ``load_digits`` itself.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target.astype(np.int64)


def load(split: str = "train", *, classes: Sequence[int] | None = None, labels_per_class: int | None = None,
         label_seed: int = 0, split_seed: int = 0, size: int = 32, shift: str = "") -> ArraySource:
    images, target = digits_arrays()
    names = tuple(str(c) for c in range(10))
    index, relabelled, names = subset.keep_classes(np.arange(len(target)), target, classes or range(10), names,
                                                   "digits")
    order = index[np.random.default_rng(split_seed).permutation(len(index))]

    base, _, _ = splits.parse(split)
    n_train = int(round(TRAIN_FRACTION * len(order)))
    bases = {"train": order[:n_train], "test": order[n_train:], "all": order}
    if base not in bases:
        raise ValueError(f"digits has splits {sorted(bases)}, not {base!r}")
    chosen = bases[base]
    _, lo, hi = splits.slice_range(split, len(chosen))
    chosen = chosen[lo:hi]
    if labels_per_class is not None:
        chosen = subset.per_class(chosen, relabelled, int(labels_per_class), int(label_seed), "digits", split)
    return counts_source("digits", images, relabelled, chosen, names, split=split, shift=shift, size=size)


def counts_source(name: str, counts: np.ndarray, labels: np.ndarray, index: np.ndarray, names: tuple[str, ...], *,
                  split: str, shift: str, size: int) -> ArraySource:
    """The examples ``index`` of 0..16 count images (digits, glyphs), shifted, as ``size``-pixel gray RGB;
    they never flip (characters are not mirror-symmetric)."""
    if len(index) == 0:
        raise ValueError(f"{name}: split {split!r} is empty")
    shown, y = shifts.apply(counts[index], labels[index], len(names), shift, index)
    return ArraySource(name, upsample(shown, size), y, names, default_flip=False)
