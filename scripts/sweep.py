"""Train many variants of one run in one program: the frozen prefix once per batch, K suffixes side by side.

  python scripts/sweep.py --config configs/resnet50_tf_flowers.py --workdir runs/sweep \
      --sweep optim.learning_rate=0.1,0.03,0.01 --sweep optim.weight_decay=0,1e-4 [--sweep seed=0,1]

Members: the Cartesian product of the --sweep values. Sweepable (they keep the computation's shape):
optim.learning_rate, optim.head_only_learning_rate, optim.weight_decay, optim.momentum, label_smoothing
and seed (the head's initialisation and dropout; the data order stays the base seed's). Fields that
change the graph (arch, frozen depth, batch or image size, ...) are refused: run those separately
(scripts/ablate_frozen_depth.py --sweep sweeps at each frozen depth). Every member sees the same batches
in the same order. Writes WORKDIR/sweep.{json,csv,png}; the same command resumes an interrupted sweep.
Exit codes: 0 done, 1 failed, 2 bad command line, 130 interrupted.
"""
from absl import flags
from ml_collections import config_flags

from tl_jax.experiment import cli, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "the base config (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "sweep directory (created; an existing one is resumed)")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,... (repeat for a Cartesian product)")
_BATCHING = flags.DEFINE_enum("batching", "vmap", ["vmap", "loop"],
                              "members vmapped (fast) or unrolled in the program (float32 bits of train.py on CPU)")
_SHARD = flags.DEFINE_bool("shard_members", False, "split the members over the devices instead of the batch")
_STOP = flags.DEFINE_integer("stop_at_step", None, "leave after this step, with a checkpoint")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    fields = sweep.parse(_SWEEP.value, _CONFIG.value)
    result = sweep.run(_CONFIG.value, _WORKDIR.value, fields, batching=_BATCHING.value, shard_members=_SHARD.value,
                       stop_at_step=_STOP.value)
    if not result["finished"]:
        print(f"stopped at step {result['step']} of {result['num_steps']}, with a checkpoint; run the same command "
              f"without --stop_at_step to continue", flush=True)
    else:
        print(f"wrote {_WORKDIR.value}/sweep.json, sweep.csv, sweep.png", flush=True)


if __name__ == "__main__":
    cli.run(main)
