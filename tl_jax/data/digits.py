"""scikit-learn's 8x8 digits as 32x32 RGB images: an offline dataset for the quickstart.

1,797 images, no download. ``classes`` keeps some digits and relabels them ``0..k-1`` in the
given order (e.g. pretrain on 0-4, transfer to 5-9); ``labels_per_class`` keeps only that many
examples of each class, chosen with ``label_seed`` (few-label transfer). Splits: ``train`` is
the first 80% of a fixed permutation (``split_seed``), ``test`` the rest, ``all`` everything;
TFDS-style slices apply on top (``train[:90%]``). Flipping is off by default: digits are not
mirror-symmetric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tl_jax.data import splits
from tl_jax.data.pipeline import ArraySource

TRAIN_FRACTION = 0.8


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, 8, 8)`` values 0..16 -> uint8 ``(N, size, size, 3)`` gray RGB (PIL bilinear)."""
    from PIL import Image

    gray = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    return np.repeat(out[..., None], 3, axis=-1)


def load(split: str = "train", *, classes: Sequence[int] | None = None, labels_per_class: int | None = None,
         label_seed: int = 0, split_seed: int = 0, size: int = 32) -> ArraySource:
    from sklearn.datasets import load_digits

    data = load_digits()
    images, target = data.images, data.target.astype(np.int64)
    classes = tuple(range(10)) if classes is None else tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
        raise ValueError(f"digits: classes must be distinct digits 0..9, got {classes}")
    relabel = np.full(10, -1, np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    keep = np.flatnonzero(relabel[target] >= 0)
    order = keep[np.random.default_rng(split_seed).permutation(len(keep))]

    base, _, _ = splits.parse(split)
    n_train = int(round(TRAIN_FRACTION * len(order)))
    bases = {"train": order[:n_train], "test": order[n_train:], "all": order}
    if base not in bases:
        raise ValueError(f"digits has splits {sorted(bases)}, not {base!r}")
    chosen = bases[base]
    _, lo, hi = splits.slice_range(split, len(chosen))
    chosen = chosen[lo:hi]

    if labels_per_class is not None:
        rng = np.random.default_rng(label_seed)
        picked = []
        for c in classes:
            of_class = chosen[target[chosen] == c]
            if len(of_class) < labels_per_class:
                raise ValueError(f"digits: split {split!r} has only {len(of_class)} examples of digit {c}, "
                                 f"fewer than labels_per_class={labels_per_class}")
            picked.append(rng.permutation(of_class)[:labels_per_class])
        chosen = np.sort(np.concatenate(picked))
    if len(chosen) == 0:
        raise ValueError(f"digits: split {split!r} is empty")
    return ArraySource("digits", upsample(images[chosen], size), relabel[target[chosen]].astype(np.int32),
                       tuple(str(c) for c in classes), default_flip=False)
