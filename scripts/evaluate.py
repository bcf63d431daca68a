"""Evaluate a training run's checkpoint on a dataset split: exact loss, top-1, top-5 as JSON.

  python scripts/evaluate.py --workdir runs/flowers                       # latest checkpoint, the run's eval split
  python scripts/evaluate.py --workdir runs/flowers --checkpoint best --split 'train[90%:]' --output eval.json
  python scripts/evaluate.py --workdir runs/flowers --source folder:/data/more_flowers --split all

The images are prepared as in training (the weights' preprocessing at the run's image size).
Only the parameters and BatchNorm statistics are restored: no optimizer is built.
"""
import json
import os

from absl import flags

from tl_jax.experiment import cli, restore

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_CKPT = flags.DEFINE_string("checkpoint", "latest", "latest | best (eval top-1) | a step number")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (default: the run's eval split)")
_SOURCE = flags.DEFINE_string("source", None, "data source (default: the run's), e.g. tfds:tf_flowers")
_BATCH = flags.DEFINE_integer("batch_size", None, "batch size (default: the run's)")
_OUTPUT = flags.DEFINE_string("output", None, "also write the JSON here")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    metrics = restore.evaluate_run(_WORKDIR.value, cli.checkpoint_flag(_CKPT.value), split=_SPLIT.value,
                                   source=_SOURCE.value, batch_size=_BATCH.value)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run(main)
