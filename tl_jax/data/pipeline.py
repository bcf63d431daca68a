"""Batches from any source: seeded order, per-process shards, padded eval, resumable training.

Order and sharding are decided here, in numpy, from ``(seed, epoch)`` alone:

* training: epoch ``e`` is a permutation of the split seeded by ``(seed, e)``; its first
  ``floor(N / batch_size)`` global batches are used (the remainder waits for the next
  epoch's permutation). Step ``s`` is batch ``s % steps_per_epoch`` of epoch
  ``s // steps_per_epoch``, so ``batches(start_step=k)`` yields exactly what an
  uninterrupted run yields from step ``k`` on;
* evaluation: the split in its stored order, ``ceil(N / batch_size)`` global batches, the last
  one padded with ``mask == 0``: every example is seen exactly once;
* processes: process ``p`` of ``P`` takes slots ``[p*L, (p+1)*L)`` of every global batch
  (``L = batch_size / P``) and reads only those examples; concatenating the processes'
  local batches gives the batch a single process would have seen.

Sources that can only be read sequentially (TFDS) give their own epochs with the same
contract (see :mod:`tl_jax.data.tfds_source`).
"""
from __future__ import annotations

import abc
import dataclasses
import os
from typing import Iterator

import numpy as np

from tl_jax.data.prefetch import Prefetcher
from tl_jax.data.transform import Transform, eval_array, normalize, train_array

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a source needs to produce this process's batches."""
    transform: Transform
    seed: int
    batch_size: int          # global, over all processes
    process_index: int
    process_count: int
    num_threads: int

    @property
    def train(self) -> bool:
        return self.transform.train

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of the split used by training epoch ``epoch``."""
    return np.random.default_rng((seed, 0, epoch)).permutation(num_examples)


def train_rows(num_examples: int, ctx: Context, epoch: int) -> np.ndarray:
    """``(steps_per_epoch, L)`` example indices: this process's slots of each global batch."""
    g, p, local = ctx.batch_size, ctx.process_index, ctx.local_batch_size
    steps = num_examples // g
    order = epoch_order(num_examples, ctx.seed, epoch)[:steps * g]
    return order.reshape(steps, g)[:, p * local:(p + 1) * local]


def eval_rows(num_examples: int, ctx: Context) -> np.ndarray:
    """``(ceil(N / B), L)`` example indices in stored order, ``-1`` where the last batch is padded."""
    g, p, local = ctx.batch_size, ctx.process_index, ctx.local_batch_size
    steps = -(-num_examples // g)
    idx = np.arange(steps * g)
    idx[idx >= num_examples] = -1
    return idx.reshape(steps, g)[:, p * local:(p + 1) * local]


def make_batch(images: np.ndarray, labels: np.ndarray, ctx: Context) -> Batch:
    """Pads a (possibly short) batch to the local batch size; eval batches carry ``mask``."""
    n, local, size = len(labels), ctx.local_batch_size, ctx.transform.image_size
    images = np.asarray(images, np.float32).reshape(n, size, size, 3)
    labels = np.asarray(labels, np.int32)
    if n < local:
        if ctx.train:
            raise AssertionError("training batches are never padded")
        images = np.concatenate([images, np.zeros((local - n, size, size, 3), np.float32)])
        labels = np.concatenate([labels, np.zeros(local - n, np.int32)])
    batch = {"image": images, "label": labels}
    if not ctx.train:
        batch["mask"] = (np.arange(local) < n).astype(np.float32)
    return batch


class Source(abc.ABC):
    """One split of a dataset, as this process will read it."""
    name: str
    class_names: tuple[str, ...]
    num_examples: int
    default_flip: bool = True    # digits are not mirror-symmetric: their source turns flipping off

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def steps(self, ctx: Context) -> int:
        """Training: global batches per epoch. Evaluation: batches in the one pass."""

    def augments(self, t: Transform) -> bool:
        """Whether training with ``t`` changes an example's pixels from epoch to epoch."""
        return t.train and (t.flip or t.scale[0] < 1.0)

    @abc.abstractmethod
    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        """This process's batches from global step ``start_step`` on: endless for training."""


def plan(num_examples: int, ctx: Context, start_step: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(epoch, row)`` for every batch from ``start_step`` on; a row holds this process's indices."""
    if not ctx.train:
        for row in eval_rows(num_examples, ctx)[start_step:]:
            yield 0, row
        return
    epoch, offset = divmod(start_step, num_examples // ctx.batch_size)
    while True:
        for row in train_rows(num_examples, ctx, epoch)[offset:]:
            yield epoch, row
        epoch, offset = epoch + 1, 0


class IndexedSource(Source):
    """A source with random access to its examples: order and shards come from :func:`plan`."""

    def steps(self, ctx: Context) -> int:
        if ctx.train:
            return self.num_examples // ctx.batch_size
        return -(-self.num_examples // ctx.batch_size)

    def plan(self, ctx: Context, start_step: int) -> Iterator[tuple[int, np.ndarray]]:
        return plan(self.num_examples, ctx, start_step)

    @abc.abstractmethod
    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        """One batch per ``(epoch, row)`` of :meth:`plan`; ``-1`` in a row is padding."""


class ArraySource(IndexedSource):
    """uint8 ``(N, H, W, 3)`` images held in memory, transformed with numpy/PIL (no TensorFlow).

    PIL's bilinear resize is always antialiased (``Transform.antialias`` does not apply).
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                 default_flip: bool = True):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.name, self.images, self.labels = name, images, np.asarray(labels, np.int32)
        self.class_names, self.num_examples, self.default_flip = tuple(class_names), len(labels), default_flip

    def transform_batch(self, ctx: Context, epoch: int, indices: np.ndarray) -> np.ndarray:
        t = ctx.transform
        if self._as_stored(t):
            return normalize(self.images[indices], t)
        if t.train:
            out = [train_array(self.images[i], np.random.default_rng((ctx.seed, 1, epoch, int(i))), t)
                   for i in indices]
        else:
            out = [eval_array(self.images[i], t) for i in indices]
        stacked = np.stack(out) if out else np.zeros((0, t.image_size, t.image_size, 3), np.uint8)
        return normalize(stacked, t)

    def augments(self, t: Transform) -> bool:
        return not self._as_stored(t) and super().augments(t)

    def _as_stored(self, t: Transform) -> bool:
        """True when the transform returns the stored image unchanged: square images already at the
        output size, and in training a crop of the whole area (the only one that fits when the aspect
        range holds 1) and no flip. The small digits and glyphs at their own size take this path."""
        h, w = self.images.shape[1:3]
        if not h == w == t.image_size:
            return False
        if not t.train:
            return t.resize_size == t.image_size
        return t.scale[0] >= 1.0 and t.ratio[0] <= 1.0 <= t.ratio[1] and not t.flip

    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        for epoch, row in self.plan(ctx, start_step):
            real = row[row >= 0]
            yield make_batch(self.transform_batch(ctx, epoch, real), self.labels[real], ctx)


class Dataset:
    """One split of one source, batched for this process. Build it with :func:`make_dataset`.

    ``batches(start_step)`` gives the batches from step ``start_step`` on: endless for
    training, one exact pass for evaluation. Batches are dicts of numpy arrays:
    ``image`` float32 ``(L, S, S, 3)`` normalised, ``label`` int32 ``(L,)``, and for evaluation
    ``mask`` float32 ``(L,)``, where ``L = batch_size / process_count``.
    """

    def __init__(self, source: Source, ctx: Context, prefetch: int = 2):
        self.source, self.ctx, self.prefetch = source, ctx, prefetch
        self._steps = source.steps(ctx)
        if self._steps == 0:
            raise ValueError(f"{source.name}: {source.num_examples} examples cannot fill one global batch of "
                             f"{ctx.batch_size}; use a smaller batch_size")

    name = property(lambda self: self.source.name)
    num_examples = property(lambda self: self.source.num_examples, doc="examples in the split (all processes)")
    num_classes = property(lambda self: self.source.num_classes)
    class_names = property(lambda self: self.source.class_names)
    batch_size = property(lambda self: self.ctx.batch_size, doc="global batch size")
    local_batch_size = property(lambda self: self.ctx.local_batch_size, doc="batch size of this process")
    train = property(lambda self: self.ctx.train)
    image_size = property(lambda self: self.ctx.transform.image_size)

    @property
    def steps_per_epoch(self) -> int:
        """Training: global batches per epoch. Evaluation: batches in one exact pass."""
        return self._steps

    @property
    def random_augmentation(self) -> bool:
        """Training batches change an example's pixels from epoch to epoch (random crop or flip)."""
        return self.source.augments(self.ctx.transform)

    @property
    def indexed(self) -> bool:
        """The order of examples is ``epoch_order``'s (a source read by index, not sequentially)."""
        return isinstance(self.source, IndexedSource)

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """Batches from global step ``start_step`` on (the same batches a run from step 0 sees there)."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if not self.ctx.train and start_step > self._steps:
            raise ValueError(f"start_step {start_step} is past the {self._steps} eval batches")
        gen = self.source.batches(self.ctx, int(start_step))
        return Prefetcher(gen, self.prefetch) if self.prefetch else gen

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(0)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.train}, num_examples={self.num_examples}, "
                f"num_classes={self.num_classes}, batch_size={self.batch_size}, "
                f"process={self.ctx.process_index}/{self.ctx.process_count}, steps_per_epoch={self._steps})")


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_context(transform: Transform, *, batch_size: int, seed: int = 0, process_index: int | None = None,
                 process_count: int | None = None, num_threads: int | None = None) -> Context:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"the global batch_size {batch_size} must be a positive multiple of the "
                         f"{process_count} processes")
    return Context(transform=transform, seed=int(seed), batch_size=int(batch_size), process_index=int(process_index),
                   process_count=int(process_count), num_threads=max(1, int(num_threads or _default_threads())))


__all__ = ["Batch", "Context", "Dataset", "Source", "IndexedSource", "ArraySource", "epoch_order", "train_rows",
           "eval_rows", "make_batch", "make_context", "plan"]
