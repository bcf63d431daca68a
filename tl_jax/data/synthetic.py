"""Random images and labels for smoke tests and benchmarks: no files, no TensorFlow.

Images are generated once, already at the model's input size, from a small pool of
per-class prototypes, so a model can fit them (a smoke test can watch the loss fall) and a
batch costs one gather. No crop or flip is applied: this source measures the model, not the
input pipeline (``scripts/benchmark_input.py`` measures that).
"""
from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np

from tl_jax.data.pipeline import Batch, Context, IndexedSource, make_batch
from tl_jax.data.transform import normalize


class SyntheticSource(IndexedSource):
    def __init__(self, split: str, image_size: int, *, num_examples: int = 256, num_classes: int = 10,
                 data_seed: int = 0, pool_size: int = 64):
        if num_examples < 1 or num_classes < 1:
            raise ValueError(f"synthetic: num_examples and num_classes must be >= 1, got {num_examples}, {num_classes}")
        self.name, self.num_examples = "synthetic", int(num_examples)
        self.class_names = tuple(f"class_{i}" for i in range(num_classes))
        self.per_class = max(1, pool_size // num_classes)
        rng = np.random.default_rng((data_seed, 0))
        self.pool = rng.integers(0, 256, (num_classes * self.per_class, image_size, image_size, 3), np.uint8)
        split_rng = np.random.default_rng((data_seed, 1, zlib.crc32(split.encode())))
        self.labels = split_rng.integers(0, num_classes, self.num_examples).astype(np.int32)
        self._normalized: dict[object, np.ndarray] = {}

    def augments(self, t) -> bool:
        return False     # the images are made at the output size: no crop, no flip

    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        t = ctx.transform
        if t not in self._normalized:
            if self.pool.shape[1] != t.image_size:
                raise ValueError(f"synthetic images are {self.pool.shape[1]}px, the pipeline wants {t.image_size}px")
            self._normalized[t] = normalize(self.pool, t)
        pool = self._normalized[t]
        for _, row in self.plan(ctx, start_step):
            real = row[row >= 0]
            labels = self.labels[real]
            yield make_batch(pool[labels * self.per_class + real % self.per_class], labels, ctx)


def load(split: str = "train", *, image_size: int, **options) -> SyntheticSource:
    """``options``: ``num_examples`` (256), ``num_classes`` (10), ``data_seed``, ``pool_size``."""
    return SyntheticSource(split, image_size, **options)
