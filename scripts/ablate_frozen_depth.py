"""Frozen-depth ablation of one recipe: train at each frozen depth (and seed), tabulate and plot.

  python scripts/ablate_frozen_depth.py --config configs/resnet50_tf_flowers.py --workdir runs/ablation
  python scripts/ablate_frozen_depth.py --config configs/resnet50_tf_flowers.py --workdir runs/ablation \
      --depths=0,3,5 --seeds=0,1,2 --scratch --surgical --config.num_epochs=5
  python scripts/ablate_frozen_depth.py --config configs/resnet50_tf_flowers.py --workdir runs/ablation_lr \
      --depths=3,5 --sweep optim.learning_rate=0.1,0.01,0.001

Writes WORKDIR/ablation.{csv,json,png}: best eval top-1 (mean and spread over seeds), trainable
parameters, steady-state throughput and wall time per variant: each frozen depth (depth<k>), with
--surgical each single trainable stage (only_<stage>: that stage trains, every other one is frozen),
with --scratch a random initialisation. Each (variant, seed) run lives in WORKDIR/runs/; re-running
the command skips finished runs and resumes interrupted ones, and refuses runs trained with another
config (use a new --workdir after changing the recipe). With --sweep (as scripts/sweep.py: repeat for
a Cartesian product) each variant is one sweep in one program, WORKDIR/runs/<variant>_sweep, and its
row is the best member. --activation_cache trains each variant from its frozen prefix's cached
activations where that is exact.
"""
from absl import flags
from ml_collections import config_flags

from tl_jax.experiment import ablation, cli, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "the recipe (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "ablation directory (created; resumed when it exists)")
_DEPTHS = flags.DEFINE_string("depths", "all", "frozen depths: all, none, or a list like 0,2,4 (-1: every backbone "
                              "stage)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds, e.g. 0,1,2")
_SURGICAL = flags.DEFINE_bool("surgical", False, "also one run per single trainable stage (the rest frozen)")
_SCRATCH = flags.DEFINE_bool("scratch", False, "also train from a random initialisation (same budget)")
_CACHE = flags.DEFINE_bool("activation_cache", False, "train from cached activations of the frozen prefix where exact")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: a sweep at each depth (see scripts/sweep.py)")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"], "progress bars (auto: on a terminal)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    rows, paths = ablation.ablate(_CONFIG.value, _WORKDIR.value, depths=_DEPTHS.value,
                                  seeds=cli.int_list(_SEEDS.value, "--seeds"), surgical=_SURGICAL.value,
                                  scratch=_SCRATCH.value, activation_cache=_CACHE.value,
                                  sweep_fields=sweep.parse(_SWEEP.value, _CONFIG.value) if _SWEEP.value else None,
                                  progress={"auto": None, "on": True, "off": False}[_PROGRESS.value])
    print(ablation.format_table(rows))
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    cli.run(main)
