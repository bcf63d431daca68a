"""Input pipeline throughput: decode + random-resized crop to 224 + flip, images/s per CPU core.

Generates --images photo-like 500x375 JPEGs (quality 90) in --dir (kept for later runs), then times
a bare tf.data map of the training transform and the whole tl_jax.data.make_dataset pipeline, each
on 1 thread and on every core, with and without an antialiased resize, for --seconds each. Prints
one JSON line per measurement on stderr and the summary as JSON on stdout: images per wall-clock
second and per CPU second of the process (the per-core rate; target >= 300). Needs TensorFlow.

  python scripts/benchmark_input.py
  python scripts/benchmark_input.py --images 16 --seconds 0.5 --batch 8 --dir /tmp/bench_jpegs
"""
import os
import tempfile

from absl import flags

from tl_jax.bench import input_speed
from tl_jax.experiment import cli

_IMAGES = flags.DEFINE_integer("images", 256, "JPEGs to generate and read", lower_bound=1)
_SECONDS = flags.DEFINE_float("seconds", 4.0, "timed seconds per measurement", lower_bound=0.0)
_BATCH = flags.DEFINE_integer("batch", 64, "images per batch", lower_bound=1)
_DIR = flags.DEFINE_string("dir", os.path.join(tempfile.gettempdir(), "tl_jax_bench_jpegs"),
                           "folder of the generated JPEGs (reused when present)")


def main(argv: list[str]) -> None:
    input_speed.run(_DIR.value, images=_IMAGES.value, seconds=_SECONDS.value, batch=_BATCH.value)


if __name__ == "__main__":
    cli.run(main)
