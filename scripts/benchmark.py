r"""Training-step throughput of tl_jax at given frozen depths, optionally beside the torchvision step.

Synthetic data on the devices, the step compiled ahead of time, a warm-up, then the median of
--chunks timed chunks of --steps steps. Prints one JSON line for the environment and one per depth
(images/s, compile time, optimizer-state bytes, trainable/frozen parameters, convolutions and
activation-shaped multiplies in the compiled step, fold_bn); with --peer torch the eager torchvision
step (peer, ratio_vs_torch), with --peer torch_compile the same step under torch.compile (peer_compile
with its compile_s, ratio_vs_torch_compile), both in the same dtype; --peer torch,torch_compile runs
both. --fold_bn/--nofold_bn: frozen BatchNorm folded into its convolution or not (default: folded).
--out also writes the records as a JSON list. Needs no TensorFlow, tfds or ml_collections.

  python scripts/benchmark.py --arch resnet50 --depths 0,4,5 --batch 256 --resolution 224 \
      --dtype bfloat16 --peer torch,torch_compile --out results.json
  python scripts/benchmark.py --arch resnet50 --depths 0,4 --batch 8 --resolution 64 --steps 5   # CPU
"""
from absl import flags

from tl_jax.bench import step_speed
from tl_jax.experiment import cli


_ARCH = flags.DEFINE_string("arch", "resnet50", "model, e.g. resnet50, vgg16, inception_v3")
_SOURCE = flags.DEFINE_enum("source", "torchvision", ["torchvision", "keras"], "which port of the model")
_DEPTHS = flags.DEFINE_list("depths", ["0", "4", "5"], "comma-separated frozen depths")
_BATCH = flags.DEFINE_integer("batch", 256, "global batch", lower_bound=1)
_RESOLUTION = flags.DEFINE_integer("resolution", 224, "image side in pixels", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", list(step_speed.DTYPES), "compute dtype, of tl_jax and the peers")
_PARALLEL = flags.DEFINE_enum("parallel", "shard_map", list(step_speed.PARALLEL_KINDS), "data-parallel wrapper")
_STEPS = flags.DEFINE_integer("steps", 20, "steps per timed chunk", lower_bound=1)
_CHUNKS = flags.DEFINE_integer("chunks", 3, "timed chunks; the median is reported", lower_bound=1)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "classes of the head", lower_bound=1)
_PEER = flags.DEFINE_list("peer", [], "also time these torchvision steps: torch (eager), torch_compile "
                          "(torch.compile), or both: torch,torch_compile")
_FOLD_BN = flags.DEFINE_boolean("fold_bn", True, "fold frozen BatchNorm into its convolution (fold_frozen_bn)")
_OUT = flags.DEFINE_string("out", "", "write the results as JSON here")
flags.register_validator("depths", lambda ds: all(d.strip().lstrip("-").isdigit() for d in ds),
                         "--depths must be integers, e.g. 0,4,5")
flags.register_validator("peer", lambda ps: all(p.strip() in step_speed.PEERS for p in ps if p.strip()),
                         f"--peer takes a comma list of {', '.join(step_speed.PEERS)}")


def main(argv: list[str]) -> None:
    step_speed.run(_ARCH.value, _SOURCE.value, [int(d) for d in _DEPTHS.value], batch=_BATCH.value,
                   resolution=_RESOLUTION.value, dtype=_DTYPE.value, parallel=_PARALLEL.value, steps=_STEPS.value,
                   chunks=_CHUNKS.value, num_classes=_NUM_CLASSES.value, peer=_PEER.value, fold_bn=_FOLD_BN.value,
                   out=_OUT.value)


if __name__ == "__main__":
    cli.run(main)
