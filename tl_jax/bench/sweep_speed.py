"""A K-member sweep (``tl_jax.members.fit``) against K sequential runs (``loop.fit``) of the same steps.

Both sides train the same model from the same variables on the same in-memory batches, member i
with learning rate ``lrs[i]``; the sequential runs are K ordinary ``loop.fit`` calls, each compiling
its own program as K ``train.py`` runs do. Reported per frozen depth: wall time of everything
(compilation included), the steady-state time of one step of all K members, and the compiled
step's memory (XLA's ``memory_analysis``: arguments, outputs and temporaries) for K members
against one run.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import loop, members
from tl_jax.freeze import FreezeSpec
from tl_jax.models import registry
from tl_jax.models.init import init_variables
from tl_jax.optim import OptimConfig


def _batches(resolution: int, batch: int, classes: int):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4, batch, resolution, resolution, 3)).astype(np.float32)
    ys = rng.integers(0, classes, (4, batch)).astype(np.int32)

    def data(start: int):
        i = start
        while True:
            yield {"image": xs[i % 4], "label": ys[i % 4]}
            i += 1
    return data


def _memory(compiled: Any) -> dict[str, int] | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    args, out, temp, alias = (int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias"))
    return {"argument_bytes": args, "output_bytes": out, "temp_bytes": temp, "peak_bytes": args + out + temp - alias}


def memory(setup: loop.Setup, sw: members.Sweep, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Compiled-step memory of one run (``setup``) and of the sweep, and their ratio."""
    run = loop.Run(setup)
    one = run.program(0).train.lower(run.initial_state(0), dict(batch)).compile()
    trainee = members.SweepRun(sw)
    layout, plan = trainee.layout, trainee.plan
    fn = layout.wrap(lambda st, sh, b: members.train_step(st, sh, b, plan=plan, axis_name=layout.axis_name,
                                                          pmean_stats=False), 1, donate=True)
    many = fn.lower(trainee.initial_state(0), trainee.shared, dict(batch)).compile()
    a, b = _memory(one), _memory(many)
    return {"one_run": a, "sweep": b,
            "peak_ratio": b["peak_bytes"] / a["peak_bytes"] if a and b and a["peak_bytes"] else None}


def compare(arch: str, depth: int, *, k: int = 8, batch: int = 32, resolution: int = 64, steps: int = 10,
            classes: int = 10, batching: str = "vmap", with_memory: bool = True) -> dict[str, Any]:
    model = registry.create(arch, "torchvision", num_classes=classes, dtype=jnp.float32)
    variables = init_variables(model, resolution, 0)
    spec = FreezeSpec(tuple(model.stage_names), depth)
    data = _batches(resolution, batch, classes)
    base = loop.Setup(model=model, variables=variables, freeze=spec, optim=OptimConfig(learning_rate=0.01),
                      num_steps=steps, train_data=data, cadence=loop.Cadence(log_every=steps))
    lrs = [float(x) for x in np.geomspace(0.1, 0.001, k)]
    variants = tuple(members.Member(OptimConfig(learning_rate=lr)) for lr in lrs)
    sw = members.Sweep(base, variants, batching=batching)

    loop.forget_programs()
    t = time.perf_counter()
    rates = [loop.fit(dataclasses.replace(base, optim=m.optim), log=lambda r: None).steps_per_s for m in variants]
    seq_wall = time.perf_counter() - t
    t = time.perf_counter()
    res = members.fit(sw, log=lambda r: None)
    sweep_wall = time.perf_counter() - t
    seq_step = sum(1 / r for r in rates)                 # one step of every member, one run after another
    sweep_step = 1 / res.steps_per_s
    record = {"arch": arch, "frozen_depth": depth, "frozen_stages": list(model.stage_names[:depth]), "members": k,
              "batch": batch, "resolution": resolution, "steps": steps,
              "batching": batching,
              "sequential_wall_s": round(seq_wall, 2), "sweep_wall_s": round(sweep_wall, 2),
              "wall_ratio": round(seq_wall / sweep_wall, 2),
              "sequential_step_s": round(seq_step, 4), "sweep_step_s": round(sweep_step, 4),
              "steady_ratio": round(seq_step / sweep_step, 2)}
    if with_memory:
        record["memory"] = memory(base, sw, next(iter(data(0))))
    return record


def environment() -> dict[str, Any]:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "platform": platform.platform(), "processor": platform.processor(),
            "date": time.strftime("%Y-%m-%d")}


def run(arch: str, depths: Sequence[int], *, k: int, batch: int, resolution: int, steps: int, batching: str,
        out: str = "", with_memory: bool = True) -> list[dict[str, Any]]:
    """Print one JSON line for the environment and one per depth; ``out`` also gets them as a list."""
    env = environment()
    print(json.dumps(env), flush=True)
    records = [env]
    for d in depths:
        r = compare(arch, d, k=k, batch=batch, resolution=resolution, steps=steps, batching=batching,
                    with_memory=with_memory)
        print(json.dumps(r), flush=True)
        records.append(r)
    if out:
        with open(out, "w") as f:
            json.dump(records, f, indent=2)
    return records
