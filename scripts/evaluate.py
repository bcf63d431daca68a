"""Evaluate a training run's checkpoint on a dataset split: exact loss, top-1, top-5 as JSON.

  python scripts/evaluate.py --workdir runs/flowers                       # latest checkpoint, eval split
  python scripts/evaluate.py --workdir runs/pets --checkpoint best --split test --output pets_test.json
  python scripts/evaluate.py --workdir runs/flowers --source folder:/data/my_flowers --split all

The images are prepared as in training (the weights' preprocessing at the run's image size).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from tl_jax import experiment  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_CKPT = flags.DEFINE_string("checkpoint", "latest", "latest | best (eval top-1) | a step number")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (default: the run's eval split)")
_SOURCE = flags.DEFINE_string("source", None, "data source (default: the run's), e.g. tfds:tf_flowers")
_BATCH = flags.DEFINE_integer("batch_size", None, "batch size (default: the run's)")
_OUTPUT = flags.DEFINE_string("output", None, "also write the JSON here")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ckpt = _CKPT.value if _CKPT.value in ("latest", "best") else int(_CKPT.value)
    metrics = experiment.evaluate_run(_WORKDIR.value, ckpt, split=_SPLIT.value, source=_SOURCE.value,
                                      batch_size=_BATCH.value)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    print(text)
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(experiment.main_with_clean_errors(main), flags_parser=experiment.parse_flags)
