"""A local image folder: ``root/<class>/**/<image>``, or ``root/<split>/<class>/...``.

Class names are the sorted subfolder names. The file list is sorted, then shuffled with
``split_seed`` (fixed, independent of the training seed), then sliced by the split string,
so ``train[:90%]`` and ``train[90%:]`` of one folder are disjoint and stable across runs.

Every file of the split is test-decoded when the split is loaded (in parallel, JPEGs at 1/8
scale: about a second per few thousand photos), so an unreadable image fails in seconds with
its path, not when training reaches it: :class:`UnreadableImagesError`, or with
``skip_corrupt=True`` a warning and the file left out.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterator

import numpy as np

from tl_jax.data import splits, tf_ops
from tl_jax.data.pipeline import Batch, Context, IndexedSource, make_batch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def scan(root: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Sorted image paths, their labels and the sorted class names of ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = tuple(sorted(d for d in os.listdir(root) if not d.startswith(".")
                           and os.path.isdir(os.path.join(root, d))))
    if not classes:
        raise ValueError(f"image folder {root!r} has no class subfolders (expected {root}/<class>/<image>)")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            warnings.warn(f"class folder {os.path.join(root, name)!r} holds no images "
                          f"({', '.join(IMAGE_EXTENSIONS)})", stacklevel=3)
        paths += sorted(found)
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"image folder {root!r} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return paths, np.asarray(labels, np.int32), classes


class UnreadableImagesError(ValueError):
    """Images of a folder that cannot be decoded; ``hint`` names the way to skip them."""

    def __init__(self, root: str, failures: list[tuple[str, str]], hint: str = "skip_corrupt=True"):
        self.root, self.failures, self.hint = root, failures, hint
        shown = "; ".join(f"{p} ({why})" for p, why in failures[:3])
        more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} unreadable image(s) in {root}: {shown}{more}. Remove or replace them, "
                         f"or pass {hint} to skip them with a warning")


class FolderSource(IndexedSource):
    """Image files decoded and augmented by tf.data, in the order the index plan gives."""

    def __init__(self, name: str, paths: list[str], labels: np.ndarray, class_names: tuple[str, ...]):
        self.name, self.class_names = name, tuple(class_names)
        self.paths, self.labels = np.asarray(paths, dtype=object), np.asarray(labels, np.int32)
        self.num_examples = len(self.paths)

    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        """One tf.data pipeline for the whole run (no restart at epoch boundaries), fed the plan
        row by row; the Python side walks its own copy of the plan in lockstep to pad and to
        name the files of a batch that fails."""
        tf = tf_ops.tf_module()

        def elements():
            for epoch, row in self.plan(ctx, start_step):
                real = row[row >= 0]
                yield self.paths[real].astype(str), self.labels[real], np.full(len(real), epoch, np.int64), real

        spec = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None], tf.int64))
        ds = tf.data.Dataset.from_generator(elements, output_signature=spec).unbatch()
        it = tf_ops.batched(ds, ctx.transform, ctx.seed, ctx.local_batch_size, ctx.num_threads,
                            read_files=True).as_numpy_iterator()
        for _, row in self.plan(ctx, start_step):
            real = row[row >= 0]
            if len(real) == 0:
                yield make_batch(np.zeros((0,), np.float32), real, ctx)
                continue
            try:
                images, labels = next(it)
            except tf.errors.OpError as e:
                raise self._unreadable(real, e) from None
            yield make_batch(images, labels, ctx)

    def _unreadable(self, indices: np.ndarray, error: Exception) -> Exception:
        """The error to raise when a batch failed (a file changed after the check at load): name it."""
        paths = [str(self.paths[i]) for i in indices]
        errors = tf_ops.decode_errors(paths, 1)
        if not errors:
            return RuntimeError(f"{self.name}: reading a batch failed ({error}); its files: {', '.join(paths)}")
        return UnreadableImagesError(self.name, sorted(errors.items()))


def load(path: str, split: str = "train", *, split_seed: int = 0, skip_corrupt: bool = False,
         num_threads: int | None = None) -> FolderSource:
    """The folder source for ``split``: ``path/<split base>`` if that folder exists, else ``path`` itself.

    Without a per-split subfolder, the split base must be ``train`` or ``all`` and the whole
    folder is sliced, e.g. ``train[:90%]`` for training and ``train[90%:]`` for evaluation.
    """
    path = os.path.expanduser(path)
    base, _, _ = splits.parse(split)
    root = os.path.join(path, base)
    if not os.path.isdir(root):
        if base not in ("train", "all"):
            raise ValueError(f"image folder {path!r} has no {base!r} subfolder; to hold out part of a single "
                             f"folder use slices such as split='train[:90%]' and split='train[90%:]'")
        root = path
    files, labels, classes = scan(root)
    order = np.random.default_rng(split_seed).permutation(len(files))
    _, lo, hi = splits.slice_range(split, len(files))
    order = order[lo:hi]
    paths, labels = [files[i] for i in order], labels[order]
    if paths:
        errors = tf_ops.decode_errors(paths, num_threads or 1)
        if errors:
            if not skip_corrupt:
                raise UnreadableImagesError(root, sorted(errors.items()))
            shown = ", ".join(sorted(errors)[:10]) + (f" and {len(errors) - 10} more" if len(errors) > 10 else "")
            warnings.warn(f"skipping {len(errors)} unreadable image(s) in {root}: {shown}", stacklevel=2)
            keep = np.asarray([p not in errors for p in paths])
            paths, labels = [p for p, good in zip(paths, keep) if good], labels[keep]
    if not paths:
        raise ValueError(f"split {split!r} of image folder {path!r} is empty")
    return FolderSource(f"folder:{path}", paths, labels, classes)
