"""Fixed distribution shifts of a small-image source: the targets of the surgical fine-tuning study.

Lee et al. (ICLR 2023) find that which block to fine-tune depends on where the target differs from
the source: at the input (corruptions: the first block) or at the output (a changed label mapping:
the last layer). These shifts make such targets from the glyphs or digits, deterministically (a
function of the images, their index and a fixed seed), on the 0..16 counts before upsampling:

* ``invert``: the ink inverted (16 - x): an input-level shift.
* ``noise``: strong fixed noise (Gaussian, std 4 counts, clipped): an input-level shift.
* ``blur``: a 3x3 box blur: an input-level shift.
* ``permute_labels``: the classes renamed by a fixed derangement: an output-level shift.
"""
from __future__ import annotations

import numpy as np

SHIFTS = ("", "invert", "noise", "blur", "permute_labels")
_SEED = 20231


def apply(images: np.ndarray, labels: np.ndarray, num_classes: int, shift: str,
          index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` under ``shift``; ``images`` are ``(N, H, W)`` counts 0..16 and ``index`` the
    examples' positions in their source (the noise of an example depends on it, not on the slice)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; choose one of {', '.join(s or repr(s) for s in SHIFTS)}")
    x = images.astype(np.float32)
    if shift == "invert":
        x = 16.0 - x
    elif shift == "noise":
        index = np.arange(len(x)) if index is None else np.asarray(index)
        noise = np.stack([np.random.default_rng((_SEED, int(i))).normal(0.0, 4.0, x.shape[1:]) for i in index]) \
            if len(x) else x
        x = x + noise
    elif shift == "blur":
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        x = sum(padded[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0
    elif shift == "permute_labels":
        labels = derangement(num_classes)[labels]
    return np.clip(np.round(x), 0, 16).astype(images.dtype), labels.astype(np.int32)


def derangement(n: int) -> np.ndarray:
    """A fixed permutation of ``range(n)`` that moves every class (so no label keeps its meaning)."""
    rng = np.random.default_rng(_SEED)
    while True:
        p = rng.permutation(n)
        if n < 2 or not (p == np.arange(n)).any():
            return p
