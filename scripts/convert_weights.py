"""Convert published torchvision / Keras ImageNet weights into a tl_jax weights directory.

  python scripts/convert_weights.py --arch resnet50 --source torchvision --output weights/resnet50_tv
  python scripts/convert_weights.py --arch vgg16 --source keras --output weights/vgg16_keras
  python scripts/convert_weights.py --arch resnet50 --source keras --input resnet50_weights.h5 --output DIR

Without --input the published file is downloaded into $TL_JAX_CACHE (default ~/.cache/tl_jax).
The output is written atomically: on any error no output directory is left behind. A Keras
_notop file gives a store without a head. Load the result with tl_jax.load_pretrained(DIR).
"""
from absl import flags

from tl_jax.experiment import cli
from tl_jax.models import registry
from tl_jax.weights import importer

_ARCH = flags.DEFINE_string("arch", None, "architecture, e.g. resnet50, vgg16_bn, inception_v3")
_SOURCE = flags.DEFINE_enum("source", None, registry.SOURCES, "where the weights were published")
_INPUT = flags.DEFINE_string("input", None, "local weights file (.pth / .h5); default: download the published one")
_OUTPUT = flags.DEFINE_string("output", None, "weights directory to create")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output directory")
flags.mark_flags_as_required(["arch", "source", "output"])


def main(argv: list[str]) -> None:
    s = importer.convert_weights(_ARCH.value, _SOURCE.value, _OUTPUT.value, _INPUT.value,
                                 overwrite=_OVERWRITE.value)
    head = "no head" if s["num_classes"] is None else f"{s['num_classes']} classes"
    print(f"converted {s['arch']} ({s['source']}, {head}): {s['params']:,} params "
          f"in {s['seconds']:.1f} s -> {s['output']}")


if __name__ == "__main__":
    cli.run(main)
