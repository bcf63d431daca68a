r"""A multi-epoch fine-tune with the frozen prefix's activations cached against recomputing them (tl_jax/bench/cache_speed.py).

  python scripts/benchmark_cache.py --arch resnet18 --depth 4 --resolution 128 --epochs 5 \
      --out benchmarks/cpu/cache_resnet18_d4_128.json

Generates an image folder (square PNGs at the training size), trains the same config twice (activation
cache off, then on; same initialisation and data order, no random augmentation) and prints one JSON
record: both wall times, the speed-up, both final top-1 and the largest relative difference of the two
runs' parameters.
"""
import os

from absl import flags

from tl_jax.bench import cache_speed
from tl_jax.experiment import cli

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")
_ARCH = flags.DEFINE_string("arch", "resnet18", "model (torchvision layout, random initialisation)")
_DEPTH = flags.DEFINE_integer("depth", 4, "frozen depth", lower_bound=1)
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "image side in pixels", lower_bound=16)
_EPOCHS = flags.DEFINE_integer("epochs", 5, "training epochs", lower_bound=1)
_CLASSES = flags.DEFINE_integer("classes", 10, "classes of the generated folder", lower_bound=2)
_PER_CLASS = flags.DEFINE_integer("per_class", 40, "images per class", lower_bound=2)
_BATCH = flags.DEFINE_integer("batch", 32, "batch size", lower_bound=1)
_OUT = flags.DEFINE_string("out", "", "also write the record as JSON here")


def main(argv: list[str]) -> None:
    cache_speed.run_all(CONFIG, _OUT.value, arch=_ARCH.value, depth=_DEPTH.value, resolution=_RESOLUTION.value,
                        epochs=_EPOCHS.value, classes=_CLASSES.value, per_class=_PER_CLASS.value, batch=_BATCH.value)


if __name__ == "__main__":
    cli.run(main)
