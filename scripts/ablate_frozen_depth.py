"""Frozen-depth ablation of one recipe: train at each frozen depth (and seed), tabulate and plot.

  python scripts/ablate_frozen_depth.py --config configs/resnet50_tf_flowers.py --workdir runs/ablation
  python scripts/ablate_frozen_depth.py --config configs/resnet50_tf_flowers.py --workdir runs/ablation \
      --depths=0,3,5 --seeds=0,1,2 --scratch --config.num_epochs=5

Writes WORKDIR/ablation.{csv,json,png}: best eval top-1 (mean and spread over seeds), trainable
parameters, steady-state throughput and wall time per frozen depth. Each (depth, seed) run lives
in WORKDIR/runs/; re-running the command skips finished runs and resumes interrupted ones.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tl_jax import experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "the recipe (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "ablation directory (created; resumed when it exists)")
_DEPTHS = flags.DEFINE_string("depths", "all", "frozen depths: all, or a list like 0,2,4 (-1: every backbone stage)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds, e.g. 0,1,2")
_SCRATCH = flags.DEFINE_bool("scratch", False, "also train from a random initialisation (same budget)")
_PROBE = flags.DEFINE_bool("probe_cache", False, "also the linear probe on cached features (tl_jax/features.py)")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"], "progress bars (auto: on a terminal)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tl_jax import ablation

    rows, paths = ablation.ablate(_CONFIG.value, _WORKDIR.value, depths=_DEPTHS.value,
                                  seeds=[int(s) for s in _SEEDS.value], scratch=_SCRATCH.value,
                                  probe_cache=_PROBE.value,
                                  progress={"auto": None, "on": True, "off": False}[_PROGRESS.value])
    print(ablation.format_table(rows))
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    app.run(experiment.main_with_clean_errors(main), flags_parser=experiment.parse_flags)
