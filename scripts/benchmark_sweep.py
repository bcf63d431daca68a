r"""A K-member sweep in one program against K sequential runs of the same steps (tl_jax/bench/sweep_speed.py).

Prints one JSON line for the environment and one per frozen depth: wall time (compilation included)
and steady-state step time of both, their ratios, and the compiled step's memory for K members
against one run. Figures: benchmarks/RESULTS.md.

  python scripts/benchmark_sweep.py --arch resnet18 --depths 5,4,0 --members 8 --batch 32 --resolution 64
"""
from absl import flags

from tl_jax.bench import sweep_speed
from tl_jax.experiment import cli

_ARCH = flags.DEFINE_string("arch", "resnet18", "model, e.g. resnet18, resnet50")
_DEPTHS = flags.DEFINE_list("depths", ["5", "4", "0"], "frozen depths (5: head only, 4: stem..layer3, 0: full)")
_MEMBERS = flags.DEFINE_integer("members", 8, "members (K) and sequential runs", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 32, "batch", lower_bound=1)
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "image side in pixels", lower_bound=8)
_STEPS = flags.DEFINE_integer("steps", 10, "steps of every run", lower_bound=2)
_BATCHING = flags.DEFINE_enum("batching", "vmap", ["vmap", "loop"], "how the sweep runs its members")
_MEMORY = flags.DEFINE_bool("memory", True, "also compile both steps once more for XLA's memory analysis")
_OUT = flags.DEFINE_string("out", "", "write the records as JSON here")


def main(argv: list[str]) -> None:
    sweep_speed.run(_ARCH.value, [int(d) for d in _DEPTHS.value], k=_MEMBERS.value, batch=_BATCH.value,
              resolution=_RESOLUTION.value, steps=_STEPS.value, batching=_BATCHING.value, out=_OUT.value,
              with_memory=_MEMORY.value)


if __name__ == "__main__":
    cli.run(main)
