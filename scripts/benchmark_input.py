"""Input pipeline throughput: decode + random-resized crop to 224 + flip, images/s per CPU core.

Generates a folder of 500x375 JPEGs (quality 90, photo-like: smooth structure plus grain,
about 50-60 KB as in GUIDE section 6), then measures

* ``tf_map``: tf.data reading files and applying our training transform
  (``tl_jax.data.tf_ops.train_image``: decode only the crop window, resize, flip, normalise),
  batched inside TensorFlow: the cost per image of the transform itself;
* ``make_dataset``: the whole public pipeline (``make_dataset("folder:...", train=True)``):
  the same plus the numpy batches and the background prefetch thread;

with 1 thread and with every core, with and without an antialiased resize. Prints JSON with
images per wall-clock second (per thread too) and images per CPU second of the process (all
its threads): the second is the per-core rate, and stays meaningful on a busy machine.
Target: >= 300 images/s per core (a bare tf.data pipeline did about 780 on one thread).

  python scripts/benchmark_input.py [--images 256] [--seconds 4] [--batch 64] [--dir /tmp/bench_jpegs]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tl_jax.data import make_dataset, tf_ops  # noqa: E402
from tl_jax.data.transform import make_transform  # noqa: E402


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


def time_iter(make_iter, seconds: float, per_item: int) -> tuple[float, float]:
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


def bench_tf_map(paths: list[str], threads: int, antialias: bool, batch: int, seconds: float):
    tf = tf_ops._tf()
    t = make_transform("torchvision", train=True, image_size=224, antialias=antialias)
    fn = tf_ops.example_fn(t, seed=0, read_files=True)
    n = len(paths)
    ds = tf.data.Dataset.range(10**9).map(lambda i: (tf.gather(tf.constant(paths), i % n), tf.constant(0, tf.int64),
                                                     i // n, i % n))
    ds = ds.map(fn, num_parallel_calls=threads, deterministic=True).batch(batch).prefetch(2)
    ds = ds.with_options(tf_ops.options(threads))
    return time_iter(lambda: iter(ds.as_numpy_iterator()), seconds, batch)


def bench_make_dataset(root: str, threads: int, antialias: bool, batch: int, seconds: float):
    ds = make_dataset(f"folder:{root}", "train", batch_size=batch, train=True, image_size=224, antialias=antialias,
                      num_threads=threads, process_index=0, process_count=1)
    return time_iter(lambda: ds.batches(0), seconds, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tl_jax_bench_jpegs"))
    args = ap.parse_args()

    paths = make_jpegs(args.dir, args.images)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    results = []
    benches = {"tf_map": lambda th, aa: bench_tf_map(paths, th, aa, args.batch, args.seconds),
               "make_dataset": lambda th, aa: bench_make_dataset(args.dir, th, aa, args.batch, args.seconds)}
    for name, bench in benches.items():
        for antialias in (True, False):
            for threads in sorted({1, cores}):
                rate, cpu_rate = bench(threads, antialias)
                results.append({"pipeline": name, "antialias": antialias, "threads": threads,
                                "images_per_s": round(rate, 1), "images_per_s_per_thread": round(rate / threads, 1),
                                "images_per_cpu_s": round(cpu_rate, 1)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "task": "decode + random-resized crop to 224 + flip (+ normalise), 500x375 JPEG q90",
        "images": len(paths), "mean_jpeg_kb": round(float(np.mean([os.path.getsize(p) for p in paths])) / 1024, 1),
        "cpu_cores": cores, "load_average_1min": round(os.getloadavg()[0], 2), "batch": args.batch,
        "target_images_per_s_per_core": 300, "results": results}, indent=1))


if __name__ == "__main__":
    main()
