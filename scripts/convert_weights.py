"""Convert published ImageNet weights (torchvision, Keras, timm, Hugging Face) into a tl_jax weights directory.

  python scripts/convert_weights.py --arch resnet50 --source torchvision --output weights/resnet50_tv
  python scripts/convert_weights.py --arch resnet50 --source torchvision --weights IMAGENET1K_V2 --output DIR
  python scripts/convert_weights.py --arch resnet50 --source timm --weights a1_in1k --output DIR
  python scripts/convert_weights.py --arch resnet50 --source hf --input SAVE_PRETRAINED_DIR --output DIR
  python scripts/convert_weights.py --arch vgg16 --source keras --input model.keras --backbone_only --output DIR

Without --input the published file is taken from the frameworks' caches ($TORCH_HOME/hub/checkpoints,
~/.keras/models, the Hugging Face cache) or downloaded. The output is written atomically: on any
error no output directory is left behind. Weights holding NaN or infinity are refused (--allow_nonfinite
overrides); a .pth file's CRC-32 checksums are verified. Load the result with tl_jax.load_pretrained(DIR).
"""
from absl import flags

from tl_jax.experiment import cli
from tl_jax.models import registry
from tl_jax.weights import importer

_ARCH = flags.DEFINE_string("arch", None, "architecture, e.g. resnet50, vgg16_bn, inception_v3")
_SOURCE = flags.DEFINE_enum("source", None, registry.SOURCES, "where the weights were published")
_WEIGHTS = flags.DEFINE_string("weights", None, "published weights tag, e.g. IMAGENET1K_V2 (torchvision), "
                               "a1_in1k (timm); default: the source's first")
_INPUT = flags.DEFINE_string("input", None, "local weights file (.pth, .safetensors, .bin, .h5, .weights.h5, .keras) "
                             "or a transformers save_pretrained directory; default: cache or download")
_OUTPUT = flags.DEFINE_string("output", None, "weights directory to create")
_BACKBONE_ONLY = flags.DEFINE_bool("backbone_only", False, "Keras: convert the keras.applications backbone of a "
                                   "model with your own layers on top, ignoring those")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output directory")
_ALLOW_NONFINITE = flags.DEFINE_bool("allow_nonfinite", False, "convert source weights that hold NaN or infinity "
                                     "(refused by default: a damaged file or a diverged training)")
flags.mark_flags_as_required(["arch", "source", "output"])


def main(argv: list[str]) -> None:
    s = importer.convert_weights(_ARCH.value, _SOURCE.value, _OUTPUT.value, _INPUT.value, weights=_WEIGHTS.value,
                                 backbone_only=_BACKBONE_ONLY.value, overwrite=_OVERWRITE.value,
                                 allow_nonfinite=_ALLOW_NONFINITE.value)
    head = "no head" if s["num_classes"] is None else f"{s['num_classes']} classes"
    if s["ignored"]:
        print(f"ignored {len(s['ignored'])} layers outside the {s['arch']} backbone: {', '.join(s['ignored'])}")
    print(f"converted {s['arch']} ({s['source']} {s['weights']}, {head}): {s['params']:,} params "
          f"in {s['seconds']:.1f} s -> {s['output']}")


if __name__ == "__main__":
    cli.run(main)
