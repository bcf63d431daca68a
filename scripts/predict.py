"""Classify image files: top-k class names with probabilities.

  python scripts/predict.py --workdir runs/flowers photo1.jpg photo2.png       # a training run (best checkpoint)
  python scripts/predict.py --weights weights/resnet50_tv --top_k 3 cat.jpg     # converted ImageNet weights

Images get the weights' evaluation preprocessing (resize, center crop, normalisation from the
metadata); class names come from the training data or the weights' metadata.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from tl_jax import experiment  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_WEIGHTS = flags.DEFINE_string("weights", None, "or: a weights directory (scripts/convert_weights.py)")
_CKPT = flags.DEFINE_string("checkpoint", "best", "with --workdir: best | latest | a step number")
_TOPK = flags.DEFINE_integer("top_k", 5, "classes to show per image")
_OUTPUT = flags.DEFINE_string("output", None, "also write the predictions as JSON here")


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise app.UsageError(f"no such image file(s): {missing}")
    ckpt = _CKPT.value if _CKPT.value in ("latest", "best") else int(_CKPT.value)
    preds = experiment.predict(paths, top_k=_TOPK.value, workdir=_WORKDIR.value, weights=_WEIGHTS.value,
                               checkpoint=ckpt)
    for p in preds:
        print(f"{p['image']}: " + ", ".join(f"{t['class']} ({t['prob']:.3f})" for t in p["top_k"]))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(preds, f, indent=2)


if __name__ == "__main__":
    app.run(experiment.main_with_clean_errors(main), flags_parser=experiment.parse_flags)
