"""``fit``: the training loop (steps, eval, JSON-lines logs, checkpoints, resume, NaN guard).

The loop never waits for the device except at log, eval and checkpoint points:
per-step metrics are accumulated on the device, including the first step whose
loss was not finite, and checked there. A non-finite loss raises
``FloatingPointError`` naming that step before anything after it is saved, so the
last checkpoint written stays the last good one.

Resuming: the checkpoint holds the state (with the rng) and the number of batches
consumed; ``train_data(start_step)`` must return the batches from that position on,
so an interrupted run ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.checkpoint import Checkpointer
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer, make_schedule, transfer_opt_state
from tl_jax.parallel import DataParallel
from tl_jax.step import TrainState, summarize_eval

Batch = Mapping[str, np.ndarray]


class JsonlLogger:
    """``log_fn`` writing one JSON object per line to ``path`` (process 0) and echoing to stdout."""

    def __init__(self, path: str | None, echo: bool = True) -> None:
        self.path, self.echo = path, echo
        if path and jax.process_index() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        if jax.process_index() != 0:
            return
        line = json.dumps(record, sort_keys=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.echo:
            print(line, file=sys.stdout, flush=True)


@dataclasses.dataclass
class FitResult:
    state: TrainState              # one logical copy (global arrays), ready for eval or export
    start_step: int                # > 0 when the run resumed from a checkpoint
    eval_metrics: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class _Program:
    """What depends on the frozen set: model, optimizer, compiled steps."""
    model: Any
    tx: Any
    train: Callable
    evaluate: Callable


@jax.jit
def _accumulate(acc: dict, metrics: dict, step: jax.Array) -> dict:
    bad = (acc["first_bad"] < 0) & ~jnp.isfinite(metrics["loss"])
    out = {k: acc[k] + metrics[k] for k in metrics}
    return {**out, "n": acc["n"] + 1, "first_bad": jnp.where(bad, step, acc["first_bad"])}


def _empty_acc() -> dict:
    z = jnp.zeros((), jnp.float32)
    return {"loss": z, "top1": z, "top5": z, "n": jnp.zeros((), jnp.int32), "first_bad": jnp.full((), -1, jnp.int32)}


def fit(model: Any, variables: Mapping[str, Any], *, freeze: FreezeSpec, optim: OptimConfig | Mapping[str, Any],
        train_data: Callable[[int], Iterator[Batch]], num_steps: int,
        eval_data: Callable[[], Iterable[Batch]] | None = None, eval_every: int = 0,
        checkpoint_every: int = 0, log_every: int = 50, workdir: str | None = None,
        parallel: str | DataParallel = "shard_map", sync_bn: bool = True, label_smoothing: float = 0.0,
        seed: int = 0, keep_checkpoints: int = 2, best_metric: str | None = "top1",
        log_fn: Callable[[dict[str, Any]], None] | None = None, async_checkpoints: bool = True) -> FitResult:
    """Train ``model`` from ``variables`` for ``num_steps`` optimizer steps, resuming from ``workdir``.

    ``train_data(start)`` yields this process's rows of each global batch from batch
    ``start`` on (dicts "image", "label"); ``eval_data()`` yields padded batches with a
    "mask". Eval runs every ``eval_every`` steps and at the end; checkpoints go to
    ``workdir/checkpoints`` every ``checkpoint_every`` steps and at the end (keeping the
    last ``keep_checkpoints`` plus the best by eval ``best_metric``; only checkpoints at
    eval steps compete for best, so let ``checkpoint_every`` divide ``eval_every``). Logs are
    dicts passed to ``log_fn`` (default: JSON lines to ``workdir/metrics.jsonl`` and stdout).

    ``freeze`` is the single source of truth: the model's ``frozen_depth`` is replaced by
    the spec's (and changed by gradual unfreezing), its ``bn_axis_name`` by the parallel
    wrapper's. Global batch sizes (train and eval) must divide by the device count.
    """
    dp = parallel if isinstance(parallel, DataParallel) else DataParallel(parallel, sync_bn=sync_bn)
    optim = optim if isinstance(optim, OptimConfig) else OptimConfig.from_config(optim)
    log_fn = log_fn or JsonlLogger(os.path.join(workdir, "metrics.jsonl") if workdir else None)
    params, stats = variables["params"], variables.get("batch_stats", {})
    freeze.check(params)
    lr_at = make_schedule(optim, num_steps)

    @functools.lru_cache(maxsize=None)
    def program(depth: int) -> _Program:
        spec = dataclasses.replace(freeze.at_step(0), frozen_depth=depth)
        mdl = dp.model(spec.apply_to(model))
        tx = make_optimizer(optim, spec, params, num_steps)
        return _Program(mdl, tx, dp.train_step(label_smoothing=label_smoothing,
                                               frozen_stats=spec.frozen_stats(params, stats)), dp.eval_step())

    def template(step: int) -> TrainState:
        p = program(freeze.depth_at(step))
        return TrainState.create(p.model.apply, {"params": params, "batch_stats": stats}, p.tx, seed)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep_checkpoints, best_metric=best_metric,
                        async_save=async_checkpoints) if workdir and checkpoint_every else None
    abstract = lambda s: jax.eval_shape(lambda: template(s))  # noqa: E731
    restored = ckpt.restore(abstract, sharding=dp.state_sharding()) if ckpt else None
    if restored:
        start, items, meta = restored
        state = abstract(start).replace(**items)
        state = dp.put_state(state) if dp.kind == "pmap" else state
        log_fn({"event": "resumed", "step": start, "data_position": meta["data_position"]})
    else:
        start, meta = 0, {"data_position": 0}
        state = dp.put_state(template(0))
    depth = freeze.depth_at(start)
    prog = program(depth)
    log_fn({"event": "start", "step": start, "num_steps": num_steps, "frozen_depth": depth,
            "devices": dp.num_devices, "processes": jax.process_count(), **freeze.at_step(start).summary(params)})

    batches = iter(train_data(int(meta["data_position"])))
    acc, t_last, eval_metrics, last_saved = _empty_acc(), time.time(), None, start
    try:
        for step in range(start, num_steps):
            if freeze.depth_at(step) != depth:     # gradual unfreezing: new partition, recompiled step
                depth, prog = freeze.depth_at(step), program(freeze.depth_at(step))
                state = _repartition(dp, state, prog)
                log_fn({"event": "unfreeze", "step": step, "frozen_depth": depth})
            state, metrics = prog.train(state, dp.put_batch(next(batches)))
            acc = _accumulate(acc, _first_replica(dp, metrics), step)
            done = step + 1
            last = done == num_steps
            if last or done % log_every == 0:
                acc, t_last = _log_train(acc, done, t_last, lr_at, log_fn, last_saved)
            if eval_data is not None and (last or (eval_every and done % eval_every == 0)):
                eval_metrics = evaluate(dp, prog.evaluate, state, eval_data)
                log_fn({"split": "eval", "step": done, **eval_metrics})
            if ckpt and (last or done % checkpoint_every == 0):
                acc, t_last = _log_train(acc, done, t_last, lr_at, log_fn, last_saved, quiet=True)
                fresh = eval_metrics if eval_metrics and eval_metrics.get("step") == done else None
                ckpt.save(done, dp.get_state(state), {"data_position": done, "frozen_depth": depth},
                          metrics=fresh)
                last_saved = done
    finally:
        if ckpt:
            ckpt.close()
    return FitResult(dp.get_state(state), start, eval_metrics)


def evaluate(dp: DataParallel, eval_fn: Callable, state: TrainState, eval_data: Callable[[], Iterable[Batch]],
             ) -> dict[str, float]:
    """Exact metrics over ``eval_data()`` (masked sums, divided once at the end)."""
    sums = None
    for batch in eval_data():
        out = _first_replica(dp, eval_fn(state, dp.put_batch(batch)))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError("eval_data() yielded no batches")
    res = summarize_eval(jax.device_get(sums))
    res["step"] = int(np.asarray(jax.device_get(_first_replica(dp, state.step))).reshape(-1)[0])
    return res


def _first_replica(dp: DataParallel, tree: Any) -> Any:
    return jax.tree.map(lambda x: x[0], tree) if dp.kind == "pmap" else tree


def _log_train(acc: dict, done: int, t_last: float, lr_at: Callable, log_fn: Callable, last_saved: int,
               quiet: bool = False) -> tuple[dict, float]:
    """Host sync: raise on a non-finite loss, else log the means since the last log."""
    host = jax.device_get(acc)
    if int(host["first_bad"]) >= 0:
        raise FloatingPointError(
            f"non-finite training loss at step {int(host['first_bad']) + 1}; training stopped. "
            f"The last checkpoint written (step {last_saved}, 0 = none) is intact.")
    if quiet:
        return acc, t_last
    n = max(int(host["n"]), 1)
    now = time.time()
    log_fn({"split": "train", "step": done, "loss": float(host["loss"]) / n, "top1": float(host["top1"]) / n,
            "top5": float(host["top5"]) / n, "lr": float(lr_at(done - 1)),
            "steps_per_s": n / max(now - t_last, 1e-9)})
    return _empty_acc(), now


def _repartition(dp: DataParallel, state: TrainState, prog: _Program) -> TrainState:
    """Move the state to a new frozen set: same arrays, new optimizer partition (state carried over)."""
    one = dp.get_state(state)
    opt_state = transfer_opt_state(one.opt_state, prog.tx.init(one.params))
    new = TrainState(step=one.step, params=one.params, batch_stats=one.batch_stats, opt_state=opt_state,
                     rng=one.rng, apply_fn=prog.model.apply, tx=prog.tx)
    return dp.put_state(new)


__all__ = ["FitResult", "JsonlLogger", "evaluate", "fit"]
