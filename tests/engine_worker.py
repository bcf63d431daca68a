"""Subprocess entry point for the engine tests that need a fresh JAX (device count, processes, SIGKILL).

  python tests/engine_worker.py parallel --out OUT.npz
      one process, 4 CPU devices: the same steps under "none" (whole global batch on one
      device), "shard_map" and "pmap", with and without synced BatchNorm.
  python tests/engine_worker.py fit --out OUT.npz --workdir DIR [--devices N]
      [--coordinator HOST:PORT --num-processes P --process-id I] [--sleep S]
      tl_jax.loop.fit on ResNet-18 with deterministic synthetic data; each process feeds its
      rows of every global batch. Writes the final params/batch_stats (process 0).
"""
from __future__ import annotations

import argparse
import json
import time

GLOBAL_BATCH, SIZE, CLASSES = 8, 32, 10


def global_batch(i: int):
    import numpy as np
    r = np.random.RandomState(1000 + i)
    return {"image": r.randn(GLOBAL_BATCH, SIZE, SIZE, 3).astype(np.float32),
            "label": r.randint(0, CLASSES, GLOBAL_BATCH).astype(np.int32)}


def random_variables(model, size: int = SIZE, seed: int = 0, calibrate: bool = False) -> dict:
    """Random variables for ``model`` without running its initialisers (VGG's 100M-weight fc6
    takes ~15 s to initialise with truncated normals on this CPU). He-uniform kernels;
    BatchNorm affine parameters and running statistics randomised so that frozen ones matter."""
    import jax
    import numpy as np
    from tl_jax.freeze import path_str
    from tl_jax.models.init import variables_template
    shapes = variables_template(model, size)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = path_str(path).rsplit("/", 1)[-1]
        if name == "kernel":
            bound = np.sqrt(6.0 / int(np.prod(x.shape[:-1])))  # He-uniform
            k = rng.random(x.shape, dtype=np.float32)
            k *= 2 * bound  # in place: fc6 of VGG has 100M weights
            k -= bound
            return k
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
        return rng.uniform(-0.2, 0.2, x.shape).astype(x.dtype)  # bias, mean
    variables = jax.tree_util.tree_map_with_path(fill, dict(shapes))
    if calibrate and "batch_stats" in variables:
        # Running statistics = the batch statistics of one training-mode forward pass on test-like
        # data, as pretrained statistics would be: frozen BatchNorm then normalises to O(1).
        x = np.random.default_rng(seed + 1).standard_normal((16, size, size, 3), dtype=np.float32)
        _, upd = jax.jit(lambda v: model.clone(frozen_stages=()).apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}))(variables)
        # Flax keeps 0.9 * old + 0.1 * batch; solve for the batch statistics.
        variables["batch_stats"] = jax.tree.map(lambda new, old: np.asarray((new - 0.9 * old) / 0.1),
                                                dict(upd["batch_stats"]), variables["batch_stats"])
    return variables


def flat(tree) -> dict:
    from tl_jax.tree import flat as flat_tree
    return flat_tree(tree)


def run_parallel(args) -> None:
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from tl_jax import models
    from tl_jax.freeze import FreezeSpec
    from tl_jax.optim import OptimConfig, make_optimizer
    from tl_jax.parallel import DataParallel
    from tl_jax.step import TrainState

    base = models.create("resnet18", "torchvision", num_classes=CLASSES)
    spec = FreezeSpec(base.stage_names, args.frozen_depth)
    variables = random_variables(base, calibrate=True)
    out = {}
    for kind, sync in (("none", True), ("shard_map", True), ("pmap", True), ("shard_map", False)):
        dp = DataParallel(kind, sync_bn=sync)
        model = base.for_training(spec.frozen_stages, dp.bn_axis_name)
        tx = make_optimizer(OptimConfig(name="sgd", learning_rate=args.lr, momentum=0.9, weight_decay=1e-4),
                            spec, variables["params"], 10)
        state = dp.put_state(TrainState.create(model.apply, variables, tx, 0))
        step = dp.train_step(frozen_stats=spec.frozen_stats(variables["params"], variables["batch_stats"]))
        losses = []
        for i in range(args.steps):
            state, metrics = step(state, dp.put_batch(global_batch(i)))
            losses.append(float(np.asarray(metrics["loss"]).reshape(-1)[0]))
        evals = dp.get(dp.eval_step(model.apply)(state.variables, dp.put_batch(
            {**global_batch(99), "mask": np.ones(GLOBAL_BATCH, np.float32)})))
        one = dp.get(state)
        tag = f"{kind}{'' if sync else '_nosync'}"
        out.update({f"{tag}:params:{k}": v for k, v in flat(one.params).items()})
        out.update({f"{tag}:batch_stats:{k}": v for k, v in flat(one.batch_stats).items()})
        out[f"{tag}:losses"] = np.asarray(losses)
        out[f"{tag}:eval_loss_sum"] = np.asarray(evals["loss_sum"]).reshape(-1)[:1]
        out[f"{tag}:devices"] = np.asarray(dp.num_devices)
    np.savez(args.out, **out)


def run_fit(args) -> None:
    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
    from tl_jax.parallel import initialize_distributed
    if args.coordinator:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, timeout_s=60)
    import numpy as np
    from tl_jax import models
    from tl_jax.freeze import FreezeSpec
    from tl_jax.loop import Cadence, Setup, fit
    from tl_jax.optim import OptimConfig
    from tl_jax.parallel import DataParallel

    nproc, pid = jax.process_count(), jax.process_index()
    rows = GLOBAL_BATCH // nproc

    def train_data(start):
        for i in range(start, args.steps):
            if args.sleep:
                time.sleep(args.sleep)
            b = global_batch(i)
            yield {k: v[pid * rows:(pid + 1) * rows] for k, v in b.items()}

    def eval_data():
        b = {**global_batch(500), "mask": np.ones(GLOBAL_BATCH, np.float32)}
        yield {k: v[pid * rows:(pid + 1) * rows] for k, v in b.items()}

    model = models.create("resnet18", "torchvision", num_classes=CLASSES)
    variables = random_variables(model, calibrate=True)
    if args.lp_ft_steps:      # LP-FT: the head alone, then everything; each phase its own learning rate
        spec = FreezeSpec(model.stage_names, schedule=((0, -1), (args.lp_ft_steps, 0)),
                          schedule_learning_rates=tuple(float(x) for x in args.phase_lrs.split(",")))
    else:
        spec = FreezeSpec(model.stage_names, args.frozen_depth, unfreeze_every=args.unfreeze_every,
                          unfreeze_until=args.unfreeze_until)
    optim = {"adamw": {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_steps": 2,
                       "grad_clip_norm": 1.0},
             "sgd": {"name": "sgd", "learning_rate": args.lr, "momentum": 0.9, "weight_decay": 1e-4}}[args.optim]
    setup = Setup(model=model, variables=variables, freeze=spec, optim=OptimConfig(**optim), num_steps=args.steps,
                  train_data=train_data, eval_data=eval_data, parallel=DataParallel("shard_map"),
                  cadence=Cadence(log_every=2, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every),
                  seed=3)
    res = fit(setup, args.workdir, log=lambda r: print(json.dumps(r, sort_keys=True), flush=True))
    params, stats = res.state.params, res.state.batch_stats
    if nproc > 1:  # replicated global arrays: take this process's copy
        params, stats = jax.tree.map(lambda x: x.addressable_data(0), (params, stats))
    moved = {f"moved:{stage}": any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                                   zip(jax.tree.leaves(params[stage]), jax.tree.leaves(variables["params"][stage])))
             for stage in model.stage_names}
    if pid == 0:
        np.savez(args.out, start_step=res.start_step, **moved, **{f"params:{k}": v for k, v in flat(params).items()},
                 **{f"batch_stats:{k}": v for k, v in flat(stats).items()})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("parallel", "fit"))
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optim", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--frozen-depth", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--unfreeze-every", type=int, default=0)
    p.add_argument("--unfreeze-until", type=int, default=0)
    p.add_argument("--lp-ft-steps", type=int, default=0)
    p.add_argument("--phase-lrs", default="1e-3,1e-3")
    args = p.parse_args()
    run_parallel(args) if args.mode == "parallel" else run_fit(args)


if __name__ == "__main__":
    main()
