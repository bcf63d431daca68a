"""Training a sweep: the stacked initial state, the loop, evaluation and checkpoints."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import loop, preemption
from tl_jax.checkpoint import Checkpointer
from tl_jax.optim import make_schedule
from tl_jax.step import summarize_eval
from tl_jax.sweep.layout import Layout
from tl_jax.sweep.split import split
from tl_jax.sweep.state import Sweep, SweepResult, SweepState
from tl_jax.sweep.step import Program, eval_step, structure, suffix_spec, train_step


def _program(sweep: Sweep, suffix_params: Any, batch_stats: Any) -> Program:
    s = sweep.setup
    depth = sweep.depth
    spec = suffix_spec(s.freeze, suffix_params)
    axis = None if sweep.shard_members else s.parallel.bn_axis_name
    full_stats = spec.frozen_stats(suffix_params, batch_stats)
    return Program(model=s.model.for_training(depth, axis), depth=depth, spec=spec,
                    like=structure([m.optim for m in sweep.members]), num_steps=s.num_steps,
                    smoothing=any(m.label_smoothing for m in sweep.members), frozen_stats=full_stats,
                    batching=sweep.batching)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def initial(sweep: Sweep) -> tuple[dict[str, Any], SweepState, Program]:
    """(shared prefix variables, the stacked initial state, the program)."""
    s = sweep.setup
    names, depth = s.model.stage_names, sweep.depth
    shared, _ = split(s.variables, names, depth)
    suffixes = []
    for i, m in enumerate(sweep.members):
        pre, suf = split(m.variables if m.variables is not None else s.variables, names, depth)
        if m.variables is not None and not _equal(pre, shared):
            raise ValueError(f"sweep member {i} has another frozen prefix than the others (its seed changes the "
                             f"initialisation of frozen stages?): members may differ in their trainable stages only")
        suffixes.append(suf)
    program = _program(sweep, suffixes[0]["params"], suffixes[0]["batch_stats"])
    params = _stack([x["params"] for x in suffixes])
    stats = _stack([x["batch_stats"] for x in suffixes])
    tx = program.optimizer(suffixes[0]["params"])
    opt_state = jax.device_get(jax.vmap(tx.init)(params))
    hyper = {"learning_rate": [m.optim.learning_rate for m in sweep.members],
             "weight_decay": [m.optim.weight_decay for m in sweep.members],
             "momentum": [m.optim.momentum for m in sweep.members],
             "label_smoothing": [m.label_smoothing for m in sweep.members]}
    state = SweepState(step=np.zeros(len(sweep.members), np.int32), params=params, batch_stats=stats,
                       opt_state=opt_state, rng=np.stack([np.asarray(jax.random.PRNGKey(m.seed)) for m in sweep.members]),
                       hyper={k: np.asarray(v, np.float32) for k, v in hyper.items()})
    return shared, state, program


def _equal(a: Any, b: Any) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(x is y or np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def state_items(state: SweepState) -> dict[str, Any]:
    """The stack as checkpoint items (the hyperparameters come from the config, not the checkpoint)."""
    return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
            "progress": {"step": state.step, "rng": state.rng}}


@jax.jit
def _accumulate(acc: dict, metrics: dict) -> dict:
    return {**{k: acc[k] + metrics[k] for k in metrics}, "n": acc["n"] + 1}


def _empty(k: int) -> dict:
    z = jnp.zeros((k,), jnp.float32)
    return {"loss": z, "top1": z, "top5": z, "n": jnp.zeros((), jnp.int32)}


def evaluate(layout: Layout, fn: Callable, state: SweepState, shared: Any,
             eval_data: Callable[[], Iterable[Mapping[str, np.ndarray]]]) -> list[dict[str, Any]]:
    """Exact per-member metrics over one pass of ``eval_data()``; ``state`` and ``shared`` as laid out."""
    sums = None
    for batch in eval_data():
        out = layout.get(fn(state.params, state.batch_stats, shared, layout.put_batch(batch)))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError("eval_data() yielded no batches")
    host = jax.device_get(sums)
    return [summarize_eval({k: v[i] for k, v in host.items()}) for i in range(len(host["count"]))]


def fit(sweep: Sweep, workdir: str | None = None, *, log: loop.Log | None = None,
        stop_at_step: int | None = None) -> SweepResult:
    """Train every member for ``setup.num_steps`` steps, resuming from ``workdir/checkpoints``.

    Records (``log``, default JSON lines in ``workdir/metrics.jsonl``) hold per-member lists:
    ``{"split": "train", "step", "loss": [K], "top1": [K], "lr": [K]}`` and ``{"split": "eval", ...}``.
    Checkpoints hold the whole stack (every item with its member axis) and keep the latest
    ``cadence.keep_checkpoints``. With checkpoints, SIGTERM or SIGINT saves the step in progress and
    raises ``preemption.Preempted``, as ``loop.fit`` does."""
    s, cad = sweep.setup, sweep.setup.cadence
    log = log or loop.JsonlLogger(os.path.join(workdir, "metrics.jsonl") if workdir else None)
    k = len(sweep.members)
    layout = Layout(s.parallel, sweep.shard_members, k)
    shared, init_state, program = initial(sweep)
    axis = layout.axis_name
    train = layout.wrap(lambda st, sh, b: train_step(st, sh, b, program=program, axis_name=axis,
                                                     pmean_stats=not s.parallel.sync_bn), 1, donate=True)
    evaluate_fn = layout.wrap(lambda p, st, sh, b: eval_step(p, st, sh, b, program=program, axis_name=axis), 2,
                              donate=False)
    schedules = [make_schedule(m.optim, s.num_steps) for m in sweep.members]
    ckpt = (Checkpointer(os.path.join(workdir, "checkpoints"), keep=cad.keep_checkpoints, best_metric=None)
            if workdir and cad.checkpoint_every else None)
    watch = preemption.Watch() if ckpt else None     # closes last: a second signal during the save is noted
    stopped_by = None
    with watch or contextlib.nullcontext(), ckpt or contextlib.nullcontext():
        start, state = 0, init_state
        restored = ckpt.restore(state_items(init_state), sharding=layout.restore_sharding()) if ckpt else None
        if restored:
            start, items, _ = restored
            state = init_state.replace(params=items["params"], batch_stats=items["batch_stats"],
                                       opt_state=items["opt_state"], step=items["progress"]["step"],
                                       rng=items["progress"]["rng"])
            log({"event": "resumed", "step": start, "data_position": start})
        log({"event": "start", "step": start, "num_steps": s.num_steps, "members": k, "frozen_depth": sweep.depth,
             "batching": program.batching, "shard_members": sweep.shard_members, "devices": s.parallel.num_devices})
        state, shared_dev = layout.put_state(state), layout.put_shared(shared)
        end = s.num_steps if stop_at_step is None else min(s.num_steps, max(int(stop_at_step), start))
        acc, final, clock = _empty(k), None, _Clock()
        batches = iter(s.train_data(start))
        try:
            for step in range(start, end):
                state, metrics = train(state, shared_dev, layout.put_batch(next(batches)))
                acc = _accumulate(acc, layout.get(metrics))
                if step == start:
                    clock.begin(metrics)
                done = step + 1
                stop = watch is not None and watch.reached(done) and done < end
                if done == end or done % cad.log_every == 0:
                    host = jax.device_get(acc)
                    n = max(int(host["n"]), 1)
                    log({"split": "train", "step": done, **{m: (host[m] / n).tolist() for m in ("loss", "top1", "top5")},
                         "lr": [float(f(done - 1)) for f in schedules]})
                    acc = _empty(k)
                    if ckpt:
                        ckpt.check()      # a background save that failed stops training here
                if s.eval_data is not None and (done == s.num_steps or (cad.eval_every and done % cad.eval_every == 0)):
                    with clock.paused():
                        evals = evaluate(layout, evaluate_fn, state, shared_dev, s.eval_data)
                        final = {"step": done, "members": evals}
                        log({"split": "eval", "step": done,
                             **{m: [e[m] for e in evals] for m in ("loss", "top1", "top5", "count")}})
                if ckpt and (done == end or stop or done % cad.checkpoint_every == 0):
                    with clock.paused():
                        ckpt.save(done, state_items(layout.get(state)),
                                  {"data_position": done, "frozen_depth": sweep.depth, "members": k})
                if stop:
                    log({"event": "preempted", "step": done})
                    stopped_by = preemption.Preempted(done, watch.signum)
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        steps_per_s = clock.rate(state, end - start)
        if start == end == s.num_steps and s.eval_data is not None:   # finished earlier: report it
            final = {"step": end, "members": evaluate(layout, evaluate_fn, state, shared_dev, s.eval_data)}
        if stopped_by is None and end < s.num_steps:
            log({"event": "stopped", "step": end})
    if stopped_by is not None:      # raised once the checkpoint has committed and the handlers are restored
        raise stopped_by
    host = jax.device_get(layout.get(state))
    return SweepResult(host, shared, start, end, final["members"] if final and end == s.num_steps else None,
                       steps_per_s, tuple(s.model.stage_names))


class _Clock:
    """Steady-state throughput: from the end of the first (compiling) step, evals and saves excluded."""

    def __init__(self):
        self.t0, self.paused_s = None, 0.0

    def begin(self, metrics: Any) -> None:
        jax.block_until_ready(metrics)
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def rate(self, state: Any, steps: int) -> float | None:
        if self.t0 is None or steps < 2:
            return None
        jax.block_until_ready(state)
        return (steps - 1) / max(time.perf_counter() - self.t0 - self.paused_s, 1e-9)
