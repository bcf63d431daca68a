"""Classify image files: top-k class names with probabilities.

  python scripts/predict.py --workdir runs/flowers photo1.jpg photo2.png       # a training run (best checkpoint)
  python scripts/predict.py --weights weights/resnet50_tv --top_k 3 cat.jpg     # converted ImageNet weights

Images get the weights' evaluation preprocessing (resize, center crop, normalisation from the
metadata); class names come from the training data or the weights' metadata. An image that
cannot be read is reported on its own line and the others are still classified (exit code 1).
"""
import json

from absl import flags

from tl_jax.experiment import cli, restore

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_WEIGHTS = flags.DEFINE_string("weights", None, "or: a weights directory (scripts/convert_weights.py)")
_CKPT = flags.DEFINE_string("checkpoint", "best", "with --workdir: best | latest | a step number")
_TOPK = flags.DEFINE_integer("top_k", 5, "classes to show per image")
_OUTPUT = flags.DEFINE_string("output", None, "also write the predictions as JSON here")


@cli.takes_args
def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise cli.UsageError("give one or more image files")
    preds = restore.predict(paths, top_k=_TOPK.value, workdir=_WORKDIR.value, weights=_WEIGHTS.value,
                            checkpoint=cli.checkpoint_flag(_CKPT.value))
    for p in preds:
        if "error" in p:
            print(f"{p['image']}: error: {p['error']}")
        else:
            print(f"{p['image']}: " + ", ".join(f"{t['class']} ({t['prob']:.3f})" for t in p["top_k"]))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(preds, f, indent=2)
    failed = [p["image"] for p in preds if "error" in p]
    if failed:
        cli.fail(f"{len(failed)} of {len(preds)} image(s) could not be read: {', '.join(failed)}")


if __name__ == "__main__":
    cli.run(main)
