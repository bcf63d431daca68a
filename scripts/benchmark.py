"""Training-step throughput of tl_jax at given frozen depths, optionally beside the torchvision step.

Synthetic data already on the devices, warm-up, then the median of timed chunks of steps.
Needs only jax/flax/optax (+ torch for ``--peer torch``): no TensorFlow, tfds or ml_collections,
so it runs as is on a bare GPU machine.

  python scripts/benchmark.py --arch resnet50 --depths 0,4,5 --batch 256 --resolution 224 \
      --dtype bfloat16 --peer torch --out results.json
  python scripts/benchmark.py --arch resnet50 --depths 0,4 --batch 8 --resolution 64 --steps 5   # CPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tl_jax import freeze, optim, parallel, step  # noqa: E402
from tl_jax.models import registry  # noqa: E402


def _peak_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _timed(fn, chunks: int, steps_per_chunk: int) -> list[float]:
    """Seconds per step for each chunk; one host sync per chunk, none inside it."""
    out = []
    for _ in range(chunks):
        t = time.perf_counter()
        fn(steps_per_chunk)
        out.append((time.perf_counter() - t) / steps_per_chunk)
    return out


def bench_tl_jax(arch: str, source: str, frozen_depth: int, *, batch: int, resolution: int, dtype: str,
                 parallel_kind: str, steps: int, chunks: int, num_classes: int, seed: int = 0) -> dict[str, Any]:
    info = registry.info(arch, source)
    spec = freeze.FreezeSpec(info.stage_names, frozen_depth)
    dp = parallel.DataParallel(kind=parallel_kind)
    model = dp.model(info.build(num_classes=num_classes, dtype=jnp.dtype(dtype), **spec.model_kwargs()))
    x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(seed))
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optim.make_optimizer(optim.OptimConfig(name="sgd", learning_rate=0.01, momentum=0.9), spec, params,
                              total_steps=10_000)
    state = step.TrainState.create(model.apply, variables, tx, rng=seed)
    opt_bytes = optim.tree_bytes(state.opt_state)
    counts = spec.summary(params)
    state = dp.put_state(state)
    rng = np.random.default_rng(seed)
    batch_np = {"image": rng.standard_normal((batch, resolution, resolution, 3), np.float32),
                "label": rng.integers(0, num_classes, (batch,)).astype(np.int32)}
    batch_dev = dp.put_batch(batch_np)
    train = dp.train_step(frozen_stats=spec.frozen_stats(params, stats))

    t = time.perf_counter()
    state, metrics = train(state, batch_dev)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def run(n: int) -> None:
        s = holder["state"]
        for _ in range(n):
            s, m = train(s, batch_dev)
        jax.block_until_ready(m)
        holder["state"] = s

    run(2)  # warm-up after compilation
    per_step = _timed(run, chunks, steps)
    med = statistics.median(per_step)
    return {"impl": "tl_jax", "arch": arch, "source": source, "frozen_depth": frozen_depth, "batch": batch,
            "resolution": resolution, "dtype": dtype, "parallel": parallel_kind, "devices": dp.num_devices,
            "img_s": batch / med, "step_ms": med * 1e3, "step_ms_all": [round(s * 1e3, 3) for s in per_step],
            "compile_s": compile_s, "peak_bytes": _peak_memory(), "opt_state_bytes": opt_bytes, **counts}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--source", default="torchvision")
    p.add_argument("--depths", default="0,4,5", help="comma-separated frozen depths")
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--parallel", default="shard_map", choices=list(parallel.KINDS))
    p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    p.add_argument("--chunks", type=int, default=3, help="timed chunks; the median is reported")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--peer", default="", choices=["", "torch"], help="also time the torchvision step")
    p.add_argument("--out", default="", help="write the results as JSON here")
    a = p.parse_args(argv)

    info = registry.info(a.arch, a.source)
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "device_count": jax.device_count(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({"env": env}), flush=True)
    results = []
    for depth in [int(d) for d in a.depths.split(",")]:
        r = bench_tl_jax(a.arch, a.source, depth, batch=a.batch, resolution=a.resolution, dtype=a.dtype,
                         parallel_kind=a.parallel, steps=a.steps, chunks=a.chunks, num_classes=a.num_classes)
        if a.peer == "torch":
            from tl_jax.torch_peer import time_torch_step

            peer = time_torch_step(info.arch, info.family, depth, a.batch, a.resolution,
                                   steps=a.steps * a.chunks, num_classes=a.num_classes,
                                   bf16=a.dtype == "bfloat16")
            r["peer"] = peer
            r["ratio_vs_torch"] = r["img_s"] / peer["img_s"]
        r.update(env)
        results.append(r)
        print(json.dumps(r), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
