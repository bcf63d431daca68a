"""Input pipeline: TFDS datasets, image folders, synthetic data and scikit-learn digits.

One entry point::

    ds = make_dataset("tfds:tf_flowers", "train[:90%]", batch_size=64, train=True,
                      preprocessing="torchvision", seed=0)
    ds.num_classes, ds.class_names, ds.num_examples, ds.steps_per_epoch
    for batch in ds.batches(start_step):      # endless for training, resumable at any step
        batch["image"], batch["label"]          # float32 (L, S, S, 3) normalised, int32 (L,)

    ev = make_dataset("tfds:tf_flowers", "train[90%:]", batch_size=64, train=False)
    for batch in ev:                           # one exact pass; the last batch is padded
        batch["mask"]                          # 1.0 for real examples, 0.0 for padding

Sources: ``"tfds:<name>"`` (any TFDS image-classification dataset, e.g. ``tfds:oxford_iiit_pet``),
``"folder:<path>"`` (one subfolder per class, JPEG/PNG), ``"synthetic"``, ``"digits"`` (scikit-learn's
8x8 handwritten digits) and ``"glyphs"`` (printed characters, ``tl_jax.data.glyphs``).
TensorFlow is imported only when a TFDS or folder dataset is iterated (never by ``import
tl_jax``) and is kept off the GPUs; synthetic and digits do not need it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tl_jax.data import digits, folder, glyphs, synthetic, tfds_source
from tl_jax.data.folder import UnreadableImagesError
from tl_jax.data.pipeline import Batch, Context, Dataset, Source, make_context
from tl_jax.data.prefetch import Prefetcher, prefetch
from tl_jax.data.transform import Transform, make_transform

SOURCES = ("tfds:<name>", "folder:<path>", "synthetic", "digits", "glyphs")


def load_source(source: str, split: str = "train", *, image_size: int | None = None,
                num_threads: int | None = None, data_dir: str | None = None, skip_corrupt: bool = False,
                **options: Any) -> Source:
    """The :class:`Source` named by ``source`` (see :func:`make_dataset` for the arguments)."""
    kind, _, arg = source.partition(":")
    if kind == "tfds" and arg:
        return tfds_source.load(arg, split, data_dir=data_dir or None, **options)
    if kind == "folder" and arg:
        return folder.load(arg, split, num_threads=num_threads, skip_corrupt=skip_corrupt, **options)
    if source == "synthetic":
        if not image_size:
            raise ValueError("the synthetic source needs image_size")
        return synthetic.load(split, image_size=image_size, **options)
    if source == "digits":
        return digits.load(split, size=image_size or 32, **options)
    if source == "glyphs":
        return glyphs.load(split, size=image_size or 8, **options)
    raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")


def make_dataset(source: str, split: str = "train", *, batch_size: int, train: bool,
                 preprocessing: str | Mapping[str, Any] | Any = "torchvision", image_size: int | None = None,
                 resize_size: int | None = None, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool | None = None, antialias: bool = False,
                 seed: int = 0, process_index: int | None = None, process_count: int | None = None,
                 num_threads: int | None = None, prefetch: int = 2, data_dir: str | None = None,
                 skip_corrupt: bool = False, **options: Any) -> Dataset:
    """Batches of ``split`` of ``source`` for this process.

    Args:
      source: ``"tfds:<name>"``, ``"folder:<path>"``, ``"synthetic"`` or ``"digits"``.
      split: a split string; TFDS slicing (``train[:90%]``) works for every source.
      batch_size: the GLOBAL batch size; each process yields ``batch_size / process_count``.
      train: random-resized crop + flip, endless seeded epochs; else resize + center crop, one
        padded and masked pass.
      preprocessing: a ``tl_jax.preprocess.SPECS`` name, a spec, or its dict (as stored in
        converted weights' metadata): normalisation and the eval resize / crop sizes.
      image_size: output side; default the spec's ``crop_size``. ``resize_size``: eval shorter
        side; default keeps the spec's ratio (256 for 224).
      scale, ratio: random-resized-crop area fraction and aspect-ratio ranges.
      flip: random horizontal flip in training; default on (off for digits).
      antialias: antialias the resize of the training crop, as torchvision does; off by default
        as it halves the images/s per core (scripts/benchmark_input.py). Eval resizes always are.
      seed: order and augmentation seed; batches are a function of ``(seed, step)``.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      num_threads: decoding threads (default: every core this process may use).
      prefetch: batches kept ready by a background thread (0: none).
      data_dir: TFDS data directory (``None`` or ``""``: the TFDS default); other sources ignore it.
      skip_corrupt: folder only: leave unreadable images out with a warning instead of failing
        (costs one up-front test decode of the split); other sources ignore it.
      **options: source options: TFDS ``image_key``, ``label_key`` (when the builder's features
        are ambiguous), ``shuffle_buffer`` (4096); folder ``split_seed``; digits ``classes``,
        ``labels_per_class``, ``label_seed``, ``split_seed``; synthetic ``num_examples``,
        ``num_classes``, ``data_seed``.
    """
    transform = make_transform(preprocessing, train=train, image_size=image_size, resize_size=resize_size,
                               scale=scale, ratio=ratio, flip=True if flip is None else flip, antialias=antialias)
    ctx = make_context(transform, batch_size=batch_size, seed=seed, process_index=process_index,
                       process_count=process_count, num_threads=num_threads)
    src = load_source(source, split, image_size=transform.image_size, num_threads=ctx.num_threads, data_dir=data_dir,
                      skip_corrupt=skip_corrupt, **options)
    if flip is None and not src.default_flip:
        ctx = dataclasses.replace(ctx, transform=dataclasses.replace(transform, flip=False))
    return Dataset(src, ctx, prefetch=prefetch)


__all__ = ["Batch", "Context", "Dataset", "Prefetcher", "SOURCES", "Source", "Transform", "UnreadableImagesError",
           "load_source", "make_dataset", "make_transform", "prefetch"]
