"""Train a model as a config says; the same command with the same --workdir resumes.

  python scripts/train.py --config configs/resnet50_tf_flowers.py --workdir runs/flowers
  python scripts/train.py --config configs/default.py --workdir runs/smoke --config.data.source=synthetic \
      --config.model.arch=resnet18 --config.data.image_size=32 --config.num_steps=20

Any field can be overridden with --config.<field>=<value>; a misspelt field fails with a hint.
``--config.freeze.frozen_depth=-1`` freezes every backbone stage (only the head trains). The
workdir gets config.json, run.json, metrics.jsonl, tensorboard/, checkpoints/ and, when done,
result.json (see tl_jax/experiment/run.py). Evaluate a run with scripts/evaluate.py, classify
images with scripts/predict.py. Exit codes: 0 done (or stopped at --stop_at_step), 1 failed,
2 bad command line, 143 stopped by SIGTERM and 130 by Ctrl-C after checkpointing the step in
progress (the same command resumes).
"""
from absl import flags
from ml_collections import config_flags

from tl_jax import parallel
from tl_jax.experiment import cli, run

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/resnet50_tf_flowers.py",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (created; an existing one is resumed)")
_STOP = flags.DEFINE_integer("stop_at_step", None, "leave after this step, with a checkpoint (time-sliced jobs)")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"], "progress bar (auto: on a terminal)")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "multi-host: host:port of process 0 (omit where JAX detects the cluster itself)")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's id")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    # JAX's multi-controller runtime: auto-detected on Slurm / Open MPI / TPU pods, explicit otherwise.
    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    result = run.train(_CONFIG.value, _WORKDIR.value, stop_at_step=_STOP.value,
                       progress={"auto": None, "on": True, "off": False}[_PROGRESS.value])
    if not result["finished"]:
        print(f"stopped at step {result['step']} of {result['num_steps']}, with a checkpoint; to continue, run the "
              f"same command without --stop_at_step (or with a larger one)", flush=True)


if __name__ == "__main__":
    cli.run(main)
