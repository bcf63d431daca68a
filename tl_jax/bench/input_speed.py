"""Input pipeline throughput: decode + random-resized crop to 224 + flip, images/s per CPU core.

Generates a folder of 500x375 JPEGs (quality 90, photo-like: smooth structure plus grain, about
50-60 KB each), then measures

* ``tf_map``: tf.data reading files and applying the training transform
  (``tl_jax.data.tf_ops.train_image``: decode only the crop window, resize, flip, normalise),
  batched inside TensorFlow: the cost per image of the transform itself;
* ``make_dataset``: the whole public pipeline (``make_dataset("folder:...", train=True)``):
  the same plus the numpy batches and the background prefetch thread;

with 1 thread and with every core, with and without an antialiased resize. Reports images per
wall-clock second (per thread too) and images per CPU second of the process (all its threads):
the second is the per-core rate, and stays meaningful on a busy machine.

Target: >= 300 images/s per core. For scale, a bare tf.data pipeline with ``decode_and_crop_jpeg``
+ resize to 224 + flip ran about 780 images/s on one thread on 500x375 quality-90 JPEGs of about
57 KB. Needs TensorFlow (the training input pipeline does).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np

from tl_jax.data import make_dataset, tf_ops
from tl_jax.data.transform import make_transform

TASK = "decode + random-resized crop to 224 + flip (+ normalise), 500x375 JPEG q90"
TARGET_IMAGES_PER_S_PER_CORE = 300


def make_jpegs(root: str, n: int, seed: int = 0) -> list[str]:
    """``n`` photo-like 500x375 JPEGs (quality 90) in ``root/<class>/``; reuses existing ones."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = os.path.join(root, f"class_{i % 4}", f"img_{i:05d}.jpg")
        paths.append(path)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
        img += rng.normal(0.0, 6.0, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return paths


def time_iter(make_iter: Callable[[], Iterator[Any]], seconds: float, per_item: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) after a short warm-up.

    The CPU-time rate is what one core sustains without contention: on a shared machine the
    wall-clock rate also measures the neighbours.
    """
    it = make_iter()
    for _ in range(2):
        next(it)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(it)
        count += per_item
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def bench_tf_map(paths: list[str], threads: int, antialias: bool, batch: int, seconds: float) -> tuple[float, float]:
    """The training transform as a bare ``tf.data`` map over ``paths``, batched in TensorFlow."""
    tf = tf_ops.tf_module()
    t = make_transform("torchvision", train=True, image_size=224, antialias=antialias)
    fn = tf_ops.example_fn(t, seed=0, read_files=True)
    n = len(paths)
    ds = tf.data.Dataset.range(10**9).map(lambda i: (tf.gather(tf.constant(paths), i % n), tf.constant(0, tf.int64),
                                                     i // n, i % n))
    ds = ds.map(fn, num_parallel_calls=threads, deterministic=True).batch(batch).prefetch(2)
    ds = ds.with_options(tf_ops.options(threads))
    return time_iter(lambda: iter(ds.as_numpy_iterator()), seconds, batch)


def bench_make_dataset(root: str, threads: int, antialias: bool, batch: int, seconds: float) -> tuple[float, float]:
    """The public pipeline, ``make_dataset("folder:<root>", train=True)``, to numpy batches."""
    ds = make_dataset(f"folder:{root}", "train", batch_size=batch, train=True, image_size=224, antialias=antialias,
                      num_threads=threads, process_index=0, process_count=1)
    return time_iter(lambda: ds.batches(0), seconds, batch)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(directory: str, *, images: int = 256, seconds: float = 4.0, batch: int = 64,
        echo: bool = True) -> dict[str, Any]:
    """Both pipelines, with and without antialiasing, on 1 thread and on every core, over ``images``
    JPEGs generated in ``directory`` (kept for the next run), in batches of ``batch`` (at most
    ``images``: a training batch never repeats an image). ``echo`` prints each measurement as a JSON
    line on stderr and the summary, which is returned, as JSON on stdout."""
    if images < 1 or batch < 1 or seconds <= 0:
        raise ValueError(f"need images >= 1, batch >= 1 and seconds > 0; got {images}, {batch}, {seconds}")
    batch = min(batch, images)
    paths = make_jpegs(directory, images)
    cores = _cores()
    benches = {"tf_map": lambda th, aa: bench_tf_map(paths, th, aa, batch, seconds),
               "make_dataset": lambda th, aa: bench_make_dataset(directory, th, aa, batch, seconds)}
    results = []
    for name, bench in benches.items():
        for antialias in (True, False):
            for threads in sorted({1, cores}):
                rate, cpu_rate = bench(threads, antialias)
                results.append({"pipeline": name, "antialias": antialias, "threads": threads,
                                "images_per_s": round(rate, 1), "images_per_s_per_thread": round(rate / threads, 1),
                                "images_per_cpu_s": round(cpu_rate, 1)})
                if echo:
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    summary = {"task": TASK, "images": len(paths),
               "mean_jpeg_kb": round(float(np.mean([os.path.getsize(p) for p in paths])) / 1024, 1),
               "cpu_cores": cores, "load_average_1min": round(os.getloadavg()[0], 2), "batch": batch,
               "target_images_per_s_per_core": TARGET_IMAGES_PER_S_PER_CORE, "results": results}
    if echo:
        print(json.dumps(summary, indent=1), flush=True)
    return summary
