"""Export a fine-tuned run (or converted weights) to the original framework's file, with a JSON beside it.

  python scripts/export_weights.py --workdir runs/flowers --to torchvision --output exported/flowers.pth
  python scripts/export_weights.py --workdir runs/flowers --checkpoint best --to safetensors --output flowers.safetensors
  python scripts/export_weights.py --workdir runs/vgg16_cats --to keras --output cats.weights.h5
  python scripts/export_weights.py --workdir weights/resnet50_tv --to torchvision --output resnet50.pth

torchvision / safetensors: a state_dict that torchvision.models.get_model(arch, num_classes=N) loads with
strict=True; keras: a Keras 3 .weights.h5 for keras.applications.X(weights=None, classes=N,
classifier_activation=None). FILE.json holds the class names, the preprocessing and how to build the model.
A model of another architecture than the target framework's (Keras' ResNet v1 to torchvision) is refused.
"""
from absl import flags

from tl_jax.experiment import cli
from tl_jax.experiment.export import export_run
from tl_jax.weights.export import TARGETS

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory of scripts/train.py, or a converted-weights directory")
_CKPT = flags.DEFINE_string("checkpoint", "latest", "latest (or last) | best (eval top-1) | a step number")
_TO = flags.DEFINE_enum("to", None, list(TARGETS), "target: torchvision (.pth), safetensors, keras (.weights.h5)")
_OUTPUT = flags.DEFINE_string("output", None, "file to write; its JSON goes to OUTPUT.json")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output file")
flags.mark_flags_as_required(["workdir", "to", "output"])


def main(argv: list[str]) -> None:
    checkpoint = cli.checkpoint_flag("latest" if _CKPT.value == "last" else _CKPT.value)
    info = export_run(_WORKDIR.value, _TO.value, _OUTPUT.value, checkpoint, overwrite=_OVERWRITE.value)
    step = f" step {info['checkpoint_step']}" if "checkpoint_step" in info else ""
    print(f"exported {info['arch']} ({info['source']}{step}, {info['num_classes']} classes) to {_TO.value}: "
          f"{_OUTPUT.value} (+ .json); load it into {info['framework_model']['call']}")


if __name__ == "__main__":
    cli.run(main)
