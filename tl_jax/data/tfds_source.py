"""Any TFDS image-classification dataset, by name, with TFDS split strings.

The image and label features are found in the builder's info (``Image`` and ``ClassLabel``
features; ``image`` / ``label`` win when several exist, as in oxford_iiit_pet whose
``segmentation_mask`` is an image and ``species`` a class label). Images are read still
encoded and decoded by our own pipeline (only the crop window for JPEGs).

TFDS files are read sequentially, so the contract of :mod:`tl_jax.data.pipeline` is kept per
process shard (``tfds.even_splits``): each process reads only its shard. A training epoch is a
shuffle seeded by ``(seed, epoch)``: a full shuffle when the shard fits ``shuffle_buffer``
(all epochs then run in one tf.data pipeline), else shuffled files and a shuffle buffer.
Resuming at step ``k`` re-reads (but does not decode) the epoch's first examples.

A dataset that is not prepared fails at once with instructions: offline, ``download=True``
would retry for minutes and ``download=False`` gives a misleading error.
"""
from __future__ import annotations

import difflib
import functools
import os
from typing import Any, Iterator

import numpy as np

from tl_jax.data import splits, tf_ops
from tl_jax.data.pipeline import Batch, Context, Source, make_batch


def _mocked(builder: Any) -> bool:
    """True under ``tfds.testing.mock_data``: examples are generated, nothing needs preparing."""
    from tensorflow_datasets.core import dataset_builder

    return getattr(dataset_builder.DatasetBuilder.download_and_prepare, "__module__", "") == \
        "tensorflow_datasets.testing.mocking"


def _not_prepared_message(name: str, builder: Any) -> str:
    data_dir = builder.data_dir_root if hasattr(builder, "data_dir_root") else os.path.dirname(builder.data_dir)
    dataset_dir = os.path.join(str(data_dir), builder.name)
    present = sorted(os.listdir(dataset_dir)) if os.path.isdir(dataset_dir) else []
    lines = [
        f"TFDS dataset {name!r} (version {builder.version}) is not prepared in {builder.data_dir}"
        + (f" (that folder holds: {', '.join(present)})" if present else "") + ".",
        "tl_jax never downloads during training (offline, TFDS would retry the download for minutes). "
        "Prepare it once on a machine with internet access:",
        f"    tfds build {name} --data_dir {data_dir}",
        f"  or: python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"",
        f"then copy {dataset_dir} to this machine and point data_dir (config data.data_dir, or the "
        "TFDS_DATA_DIR environment variable) at the folder that contains it.",
    ]
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        lines.append(f"This dataset needs a manual download into {os.path.join(str(data_dir), 'downloads', 'manual')}:"
                     f" {' '.join(str(manual).split())}")
    return "\n".join(lines)


def builder(name: str, data_dir: str | None = None) -> Any:
    """The prepared TFDS builder of ``name``, or a clear error within seconds."""
    tfds = tf_ops.tfds_module()
    try:
        b = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.DatasetNotFoundError:
        close = difflib.get_close_matches(name.split(":")[0].split("/")[0], sorted(set(tfds.list_builders())), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"TFDS has no dataset named {name!r}.{hint} "
                         "The catalog: https://www.tensorflow.org/datasets/catalog/overview") from None
    if not _mocked(b) and not b.is_prepared():
        raise FileNotFoundError(_not_prepared_message(name, b))
    return b


def _pick(features: Any, kind: type, preferred: str, what: str, override: str | None, name: str) -> str:
    if override:
        if override not in features or not isinstance(features[override], kind):
            raise ValueError(f"{name}: {what}_key={override!r} is not a {kind.__name__} feature; "
                             f"features: {dict(features.items())}")
        return override
    found = [k for k, f in features.items() if isinstance(f, kind)]
    if preferred in found:
        return preferred
    if len(found) == 1:
        return found[0]
    raise ValueError(f"{name}: cannot tell which feature is the {what} ({kind.__name__} features: {found or 'none'}); "
                     f"pass {what}_key=<feature name>")


def _check_split(name: str, split: str, builder: Any) -> None:
    """Refuse a split the dataset does not have, naming the ones it has (TFDS would raise deep in tf.data)."""
    base = splits.parse(split)[0]
    known = sorted(builder.info.splits.keys())
    if known and base not in known:
        raise ValueError(f"{name} has no split {base!r}; it has: {', '.join(known)} (slices such as "
                         f"'{known[0]}[90%:]' hold out part of one)")


class TFDSSource(Source):
    """One split of a TFDS dataset, read sequentially per process shard."""

    def __init__(self, name: str, split: str, *, data_dir: str | None = None, image_key: str | None = None,
                 label_key: str | None = None, shuffle_buffer: int = 4096):
        tfds = tf_ops.tfds_module()
        self._builder = builder(name, data_dir)
        features = self._builder.info.features
        self.image_key = _pick(features, tfds.features.Image, "image", "image", image_key, name)
        self.label_key = _pick(features, tfds.features.ClassLabel, "label", "label", label_key, name)
        self.name, self.split, self.shuffle_buffer = f"tfds:{name}", split, int(shuffle_buffer)
        _check_split(self.name, split, self._builder)
        self.class_names = tuple(features[self.label_key].names)
        self._sizes: dict[str, int] = {}
        self.num_examples = self._size(split)

    @functools.cached_property
    def _decoders(self) -> Any:
        tfds = tf_ops.tfds_module()
        return tfds.decode.PartialDecoding({self.image_key: True, self.label_key: True},
                                           decoders={self.image_key: tfds.decode.SkipDecoding()})

    def _read(self, split: Any, ctx: Context | None = None, shuffle_seed: int | None = None) -> Any:
        tfds = tf_ops.tfds_module()
        config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                 options=tf_ops.options(ctx.num_threads) if ctx else None)
        ds = self._builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, decoders=self._decoders,
                                      read_config=config)
        return ds.map(lambda ex: (ex[self.image_key], ex[self.label_key]))

    def _size(self, split: Any) -> int:
        key = str(split)
        if key not in self._sizes:
            n = int(self._read(split).cardinality())
            if n < 0:
                raise ValueError(f"{self.name}: the size of split {split!r} is unknown")
            self._sizes[key] = n
        return self._sizes[key]

    def _shards(self, ctx: Context) -> list[Any]:
        tfds = tf_ops.tfds_module()
        if ctx.process_count == 1:
            return [self.split]
        return tfds.even_splits(self.split, n=ctx.process_count, drop_remainder=ctx.train)

    def steps(self, ctx: Context) -> int:
        sizes = [self._size(s) for s in self._shards(ctx)]
        if ctx.train:
            return min(sizes) // ctx.local_batch_size
        return -(-max(sizes) // ctx.local_batch_size)

    def batches(self, ctx: Context, start_step: int) -> Iterator[Batch]:
        steps = self.steps(ctx)
        if not ctx.train:
            done = start_step
            for batch in self._run(ctx, self._eval_elements(ctx, start_step)):
                yield batch
                done += 1
            for _ in range(done, steps):  # this shard ran out before the longest one: padding only
                yield make_batch(np.zeros((0,), np.float32), np.zeros((0,), np.int32), ctx)
            return
        epoch, offset = divmod(start_step, steps)
        if self._size(self._shard(ctx)) <= self.shuffle_buffer:
            yield from self._run(ctx, self._buffered_epochs(ctx, epoch, offset))   # one pipeline, endless
            return
        while True:
            yield from self._run(ctx, self._file_shuffled_epoch(ctx, epoch, offset))
            epoch, offset = epoch + 1, 0

    def _shard(self, ctx: Context) -> Any:
        return self._shards(ctx)[ctx.process_index]

    def _run(self, ctx: Context, ds: Any) -> Iterator[Batch]:
        for images, labels in tf_ops.batched(ds, ctx.transform, ctx.seed, ctx.local_batch_size,
                                             ctx.num_threads).as_numpy_iterator():
            yield make_batch(images, labels, ctx)

    def _eval_elements(self, ctx: Context, first_step: int) -> Any:
        tf = tf_ops.tf_module()
        ds = self._read(self._shard(ctx), ctx).skip(first_step * ctx.local_batch_size)
        return ds.map(lambda data, label: (data, label, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))

    def _epoch_elements(self, ctx: Context, ds: Any, epoch: Any) -> Any:
        """An epoch's first ``steps * L`` shuffled examples as ``(bytes, label, epoch, key)``."""
        tf = tf_ops.tf_module()
        p, count = ctx.process_index, ctx.process_count
        ds = ds.take(self.steps(ctx) * ctx.local_batch_size).enumerate()
        return ds.map(lambda pos, x: (x[0], x[1], tf.cast(epoch, tf.int64), pos * count + p))

    def _buffered_epochs(self, ctx: Context, epoch: int, first_step: int) -> Any:
        """The shard fits the shuffle buffer: every epoch a full shuffle seeded by ``(seed, epoch)``,
        all epochs in one pipeline (no restart every few steps on small datasets).

        The permutation is stateless in ``(seed, epoch)`` alone: ``Dataset.shuffle`` would mix in TensorFlow's
        global seed (``tf.random.set_seed``, which ``keras.utils.set_random_seed`` calls), changing the order,
        and fails on an epoch-dependent seed when that global seed is 0."""
        tf = tf_ops.tf_module()
        shard = self._shard(ctx)
        base, n = self._read(shard, ctx), self._size(shard)

        def one_epoch(e):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(ctx.seed, tf.int64), e]))
            whole = base.batch(n).map(lambda data, label: (tf.gather(data, order), tf.gather(label, order)))
            return self._epoch_elements(ctx, whole.unbatch(), e)   # the shard in memory, as the shuffle buffer was

        ds = tf.data.Dataset.range(epoch, 2**62).flat_map(one_epoch)
        return ds.skip(first_step * ctx.local_batch_size)   # read, not decoded

    def _file_shuffled_epoch(self, ctx: Context, epoch: int, first_step: int) -> Any:
        """A large shard: files shuffled, then a shuffle buffer, both seeded by ``(seed, epoch)``."""
        shard = self._shard(ctx)
        seeds = np.random.default_rng((ctx.seed, 2, epoch)).integers(2**31, size=2)
        ds = self._read(shard, ctx, shuffle_seed=int(seeds[0]))
        ds = ds.shuffle(self.shuffle_buffer, seed=int(seeds[1]), reshuffle_each_iteration=False)
        return self._epoch_elements(ctx, ds, epoch).skip(first_step * ctx.local_batch_size)


def load(name: str, split: str = "train", **options: Any) -> TFDSSource:
    """``options``: ``data_dir``, ``image_key``, ``label_key``, ``shuffle_buffer``."""
    return TFDSSource(name, split, **options)
