"""Benchmark: ResNet-50 train step on the CPU, frozen prefix vs full fine-tune. Prints JSON.

  python scripts/bench_freeze_cpu.py [--batch 16] [--size 96] [--depth 4] [--steps 5]

The frozen step should be much cheaper: with stem..layer3 frozen (frozen_depth=4) the
optimizer holds no state for them, their BatchNorm uses running averages and XLA drops
their backward pass. Reported: median seconds per step (after compilation and a warm-up
step), the speed-up, convolutions in the compiled HLO and optimizer-state bytes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tl_jax import models  # noqa: E402
from tl_jax.freeze import FreezeSpec  # noqa: E402
from tl_jax.optim import OptimConfig, make_optimizer, tree_bytes  # noqa: E402
from tl_jax.step import TrainState, train_step  # noqa: E402


def bench(arch: str, depth: int, batch: dict, steps: int, variables: dict, dtype) -> dict:
    base = models.create(arch, "torchvision", num_classes=10, dtype=dtype)
    spec = FreezeSpec(base.stage_names, depth)
    model = spec.apply_to(base)
    tx = make_optimizer(OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9), spec, variables["params"], 1000)
    state = TrainState.create(model.apply, jax.tree.map(jnp.array, variables), tx, 0)
    step = jax.jit(functools.partial(train_step, frozen_stats=spec.frozen_stats(variables["params"],
                                                                                  variables["batch_stats"])),
                   donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    convs = compiled.as_text().count("convolution(")
    state, m = compiled(state, batch)        # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready((state.params, m))
        times.append(time.perf_counter() - t0)
    return {"frozen_depth": depth, "step_s": float(np.median(times)), "step_s_all": [round(t, 4) for t in times],
            "compile_s": round(compile_s, 2), "convolutions": convs, "opt_state_bytes": tree_bytes(state.opt_state),
            "loss": float(m["loss"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args()
    dtype = jnp.dtype(args.dtype)
    r = np.random.RandomState(0)
    batch = {"image": r.randn(args.batch, args.size, args.size, 3).astype(np.float32),
             "label": r.randint(0, 10, args.batch).astype(np.int32)}
    model = models.create(args.arch, "torchvision", num_classes=10)
    variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"][:1]))
    results = [bench(args.arch, d, batch, args.steps, variables, dtype) for d in (0, args.depth)]
    full, frozen = results
    print(json.dumps({"benchmark": "freeze_cpu", "arch": args.arch, "batch": args.batch, "size": args.size,
                      "dtype": args.dtype, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "jax": jax.__version__, "full": full, "frozen": frozen,
                      "speedup": full["step_s"] / frozen["step_s"]}, indent=1))


if __name__ == "__main__":
    main()
