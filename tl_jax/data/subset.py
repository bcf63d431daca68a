"""Class subsets and few-label subsamples of an indexed source (digits, glyphs), decided once, seeded.

``keep_classes`` keeps some classes and relabels them ``0..k-1`` in the given order (pretrain on
some classes, transfer to the others: the halves A and B of a transferability study);
``per_class`` keeps ``k`` examples of each class, drawn with a seed (few-label transfer).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def keep_classes(index: np.ndarray, labels: np.ndarray, classes: Sequence[int], names: Sequence[str],
                 source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(the examples of ``index`` whose class is kept, every label renumbered (-1: dropped), the kept names)."""
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(len(names))):
        raise ValueError(f"{source}: classes must be distinct class indices 0..{len(names) - 1}, got {classes}")
    relabel = np.full(len(names), -1, np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    relabelled = relabel[labels]
    return index[relabelled[index] >= 0], relabelled.astype(np.int32), tuple(names[c] for c in classes)


def per_class(index: np.ndarray, labels: np.ndarray, k: int, seed: int, source: str, split: str) -> np.ndarray:
    """``k`` examples of each class present among ``index`` (labels indexed like the source), sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels[index]):
        of_class = index[labels[index] == c]
        if len(of_class) < k:
            raise ValueError(f"{source}: split {split!r} has only {len(of_class)} examples of class {c}, "
                             f"fewer than labels_per_class={k}")
        picked.append(rng.permutation(of_class)[:k])
    return np.sort(np.concatenate(picked))
