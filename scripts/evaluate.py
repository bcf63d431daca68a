"""Evaluate a training run's checkpoint, or converted weights, on a dataset split: exact loss, top-1, top-5 as JSON.

  python scripts/evaluate.py --workdir runs/flowers                       # latest checkpoint, the run's eval split
  python scripts/evaluate.py --workdir runs/flowers --checkpoint best --split 'train[90%:]' --output eval.json
  python scripts/evaluate.py --workdir runs/flowers --source folder:/data/more_flowers --split all
  python scripts/evaluate.py --weights weights/resnet50_tv --source tfds:imagenet2012 --split validation

A run's images are prepared as in training (the weights' preprocessing at the run's image size);
converted weights (--weights) with their own evaluation preprocessing, and the result shows the
publisher's top-1 beside ours. Only parameters and BatchNorm statistics are restored.
"""
import json
import os

from absl import flags

from tl_jax.experiment import cli, restore

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_WEIGHTS = flags.DEFINE_string("weights", None, "or: a converted-weights directory, evaluated with its own head")
_CKPT = flags.DEFINE_string("checkpoint", "latest", "latest | best (eval top-1) | a step number")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (default: the run's eval split)")
_SOURCE = flags.DEFINE_string("source", None, "data source (default: the run's), e.g. tfds:tf_flowers")
_BATCH = flags.DEFINE_integer("batch_size", None, "batch size (default: the run's)")
_OUTPUT = flags.DEFINE_string("output", None, "also write the JSON here")
flags.register_multi_flags_validator(["workdir", "weights"], lambda f: (f["workdir"] is None) != (f["weights"] is None),
                                     "give exactly one of --workdir (a training run) or --weights (converted weights)")


def main(argv: list[str]) -> None:
    if _WEIGHTS.value:
        if not (_SOURCE.value and _SPLIT.value):
            raise ValueError("--weights needs --source and --split (e.g. --source tfds:imagenet2012 --split validation)")
        metrics = restore.evaluate_weights(_WEIGHTS.value, _SOURCE.value, _SPLIT.value, batch_size=_BATCH.value or 64)
        published = "not published" if metrics["published_top1"] is None else \
            f"{100 * metrics['published_top1']:.2f}%" + (f" ({metrics['published_eval']})"
                                                        if metrics["published_eval"] else "")
        print(f"{metrics['arch']} ({metrics['source']} {metrics['tag']}) on {metrics['data']} {metrics['split']}: "
              f"top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}% over {metrics['count']} "
              f"images; published top-1 {published}")
    else:
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
