"""TensorFlow side of the pipeline: decode, random-resized crop, flip, resize + center crop.

TensorFlow is imported lazily (``tf_module()``), only when a source that needs it is iterated, and
is hidden from every GPU so that it never takes accelerator memory from JAX.

Randomness is stateless: the crop and flip of an example are functions of
``(seed, epoch, example index)`` only, so a batch is the same whatever the number of threads,
the prefetch depth, or the step a run was restarted at.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import warnings
from typing import Any

import numpy as np

_TF: Any = None


def _load_triton_first() -> None:
    """Load Triton's native library before TensorFlow, when Triton is installed.

    Triton (imported by ``torch._dynamo``, hence by ``torchvision``) segfaults while loading
    if TensorFlow's bundled LLVM is already in the process (torch 2.14 / TF 2.21); loaded
    first, both work. It costs about 0.1 s and matters to any process that also uses torch,
    such as the test suite and the PyTorch comparison.
    """
    if importlib.util.find_spec("triton") is None:
        return
    try:
        importlib.import_module("triton._C.libtriton")
    except Exception:  # noqa: BLE001 - a broken Triton must not stop the data pipeline
        pass


def tf_module():
    """TensorFlow, imported once and kept off every GPU.

    Its import prints C++ INFO lines (oneDNN notices, twice) before its logging can be configured;
    they are silenced. Python errors of the import still show.
    """
    global _TF
    if _TF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        _load_triton_first()
        with _quiet_stderr():
            import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow was initialised before us; check what it sees
            if tf.config.get_visible_devices("GPU"):
                warnings.warn("TensorFlow was initialised with GPUs visible before tl_jax.data could hide "
                              "them; it may take GPU memory from JAX", RuntimeWarning, stacklevel=2)
        _TF = tf
    return _TF


def tfds_module():
    tf_module()
    with _quiet_stderr():
        import tensorflow_datasets as tfds

    return tfds


def example_key(seed: int, epoch: Any, index: Any) -> Any:
    """The stateless seed of one example: fold (seed, epoch) with the example's index."""
    tf = tf_module()
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


# libjpeg's accurate integer DCT: the pixels PIL (hence torchvision) decodes, exactly. TF's
# default ("INTEGER_FAST") differs by about one gray level on average.
_DCT = "INTEGER_ACCURATE"


def decode(data: Any) -> Any:
    """Encoded JPEG / PNG / GIF / BMP bytes -> uint8 RGB ``(H, W, 3)``; JPEGs decoded as PIL does."""
    tf = tf_module()
    return tf.cond(tf.io.is_jpeg(data), lambda: tf.io.decode_jpeg(data, channels=3, dct_method=_DCT),
                   lambda: tf.io.decode_image(data, channels=3, expand_animations=False))


def _crop_window(shape: Any, key: Any, t: Any) -> Any:
    """Random-resized-crop window ``[y, x, h, w]``: area in ``t.scale``, aspect in ``t.ratio``.

    TF's sampler (10 attempts, the whole image as fallback) stands in for torchvision's
    ``RandomResizedCrop.get_params`` (which falls back to a ratio-clamped center crop).
    """
    tf = tf_module()
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=key, min_object_covered=0.0,
        aspect_ratio_range=t.ratio, area_range=t.scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _finish(image: Any, t: Any) -> Any:
    """Resized float image (0..255) -> rounded like a uint8 image, then normalised per ``t``."""
    tf = tf_module()
    x = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    if t.bgr:
        x = x[..., ::-1]
    return x * tf.constant(t.mul, tf.float32) + tf.constant(t.add, tf.float32)


def train_image(data: Any, key: Any, t: Any) -> Any:
    """Encoded bytes -> random-resized crop (decoding only the window for JPEG) -> flip -> normalise."""
    tf = tf_module()
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))

    def jpeg():
        window = _crop_window(tf.io.extract_jpeg_shape(data), crop_key, t)
        return tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method=_DCT)

    def other():
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        w = _crop_window(tf.shape(img), crop_key, t)
        return img[w[0]:w[0] + w[2], w[1]:w[1] + w[3]]

    img = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    img = tf.image.resize(img, [t.image_size, t.image_size], method="bilinear", antialias=t.antialias)
    if t.flip:
        img = tf.image.stateless_random_flip_left_right(img, seed=flip_key)
    img = tf.ensure_shape(img, [t.image_size, t.image_size, 3])
    return _finish(img, t)


def eval_image(data: Any, t: Any) -> Any:
    """Encoded bytes -> shorter side to ``t.resize_size`` (antialiased, ``t.interpolation``) -> center crop -> normalise.

    The geometry is torchvision's ``Resize(int)`` + ``CenterCrop`` (``tl_jax.preprocess``):
    the long side is truncated, the crop offset rounds half to even like Python's ``round``.
    """
    tf = tf_module()
    img = decode(data)
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.floor(tf.cast(t.resize_size * long, tf.float64) / tf.cast(short, tf.float64)), tf.int32)
    nh, nw = (tf.where(h <= w, t.resize_size, new_long), tf.where(h <= w, new_long, t.resize_size))
    img = tf.image.resize(img, tf.stack([nh, nw]), method=t.interpolation, antialias=True)
    c = t.image_size
    top = tf.cast(tf.round(tf.cast(nh - c, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(nw - c, tf.float64) / 2.0), tf.int32)
    img = tf.ensure_shape(img[top:top + c, left:left + c], [c, c, 3])
    return _finish(img, t)


def example_fn(t: Any, seed: int, read_files: bool = False):
    """``(bytes or path, label, epoch, index) -> (image, label)`` for ``Dataset.map``."""
    tf = tf_module()

    def fn(data, label, epoch, index):
        if read_files:
            data = tf.io.read_file(data)
        if t.train:
            img = train_image(data, example_key(seed, epoch, index), t)
        else:
            img = eval_image(data, t)
        return img, tf.cast(label, tf.int32)

    return fn


def options(num_threads: int) -> Any:
    """Deterministic tf.data options with a private pool of ``num_threads`` threads."""
    tf = tf_module()
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.private_threadpool_size = num_threads
    opts.threading.max_intra_op_parallelism = 1
    return opts


def batched(ds: Any, t: Any, seed: int, local_batch: int, num_threads: int, read_files: bool = False) -> Any:
    """(bytes or path, label, epoch, index) elements -> prefetched batches of (image, label).

    The last batch may be short; the caller pads it.
    """
    ds = ds.map(example_fn(t, seed, read_files), num_parallel_calls=num_threads, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=False)
    return ds.prefetch(2).with_options(options(num_threads))


def decode_errors(paths: list[str], num_threads: int) -> dict[str, str]:
    """``{path: reason}`` for the files TensorFlow cannot decode, checked in parallel.

    JPEGs are decoded at 1/8 scale: every compressed byte is still read, so truncated or
    garbled files fail as they would at full size, at a fraction of the cost. libjpeg's own
    warnings ("Corrupt JPEG data: ...") go to the C stderr; they are silenced here because the
    reason is returned.
    """
    tf = tf_module()

    def check(i, path):
        data = tf.io.read_file(path)
        img = tf.cond(tf.io.is_jpeg(data), lambda: tf.io.decode_jpeg(data, channels=3, ratio=8),
                      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        return i, tf.shape(img)[0]

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.asarray(paths, dtype=object)))
    ds = ds.map(check, num_parallel_calls=num_threads, deterministic=True).ignore_errors()
    ok = np.zeros(len(paths), bool)
    with _quiet_stderr():
        for i, _ in ds.with_options(options(num_threads)).as_numpy_iterator():
            ok[i] = True
        return {p: _reason(tf, p) for p, good in zip(paths, ok) if not good}


def _reason(tf: Any, path: str) -> str:
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as e:  # drop TF's op decoration: "{{function_node ...}} <reason> [Op:DecodeImage]"
        text = (e.message or type(e).__name__).splitlines()[0]
        return re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", text) or type(e).__name__
    return "not decodable at reduced size"


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null (C libraries print there, bypassing ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
