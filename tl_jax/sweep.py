"""Sweeps: K hyperparameter variants of one run, trained side by side in one compiled step.

What is shared and what is not. The frozen prefix (stages ``[0, d)``, ``d`` = the frozen depth)
is the same for every member: its parameters and BatchNorm statistics are held once and every
batch goes through it once. The trainable suffix, its BatchNorm statistics, its optimizer state,
its rng and step carry a leading member axis of size K, and so do the per-member hyperparameters
(:data:`HYPER`), which reach the step as arrays: one compiled program serves every value.

Splitting the model needs no model API: a Flax method interceptor. The prefix runs the model until
the module of stage ``d - 1`` returns and keeps that output; each member runs the whole model with
the modules of stages ``< d`` replaced by it (earlier ones skipped, so nothing of the prefix is
computed again). Everything from the stage boundary on, pooling and dropout included, runs per
member with that member's rng, exactly as in a single run.

Members run either vmapped (one batched computation) or as a loop unrolled in the program, which
repeats a single run's operations exactly; ``batching="auto"`` picks vmap on accelerators or when
only the head trains, the loop otherwise (see :func:`batching_for`).

Equal to separate runs: each member's updates are those of ``loop.fit`` with its values (same
batches, same rng, same optax chain; a member whose weight decay or momentum is 0 adds ``0 * x``
inside a chain that has the part). Every member sees the same batches in the same order. A member
whose loss stops being finite does not stop the others: its numbers are reported as they are.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tl_jax import loop
from tl_jax.checkpoint import Checkpointer
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer, make_schedule
from tl_jax.parallel import AXIS, DataParallel
from tl_jax.step import _correct, cross_entropy, restore_frozen_stats, summarize_eval
from tl_jax.tree import leaf_paths

# Per-member numbers that reach the step as arrays (they keep the computation's shape).
HYPER = ("learning_rate", "weight_decay", "momentum", "label_smoothing")
BATCHINGS = ("auto", "vmap", "loop")
MEMBERS = "members"     # mesh axis when the member axis is sharded over devices


@dataclasses.dataclass(frozen=True)
class Member:
    """One variant: its optimizer, label smoothing, seed (dropout rng) and initial variables (None:
    the setup's). Its frozen prefix must equal the setup's: only the suffix may differ (another head)."""
    optim: OptimConfig
    label_smoothing: float = 0.0
    seed: int = 0
    variables: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Sweep:
    """``setup``: what every member shares (model, frozen set, data, steps, parallelism, cadence; its
    ``optim``, ``label_smoothing`` and ``seed`` are ignored); ``members``: what differs.

    ``shard_members``: lay the member axis over the devices (each device trains K / devices members on
    the whole batch, no collectives) instead of splitting the batch (``setup.parallel``)."""
    setup: loop.Setup
    members: tuple[Member, ...]
    batching: str = "auto"
    shard_members: bool = False

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a sweep needs at least one member")
        if self.batching not in BATCHINGS:
            raise ValueError(f"unknown batching {self.batching!r}; choose one of {BATCHINGS}")
        if self.setup.freeze.unfreeze_every:
            raise ValueError("a sweep cannot unfreeze gradually: the shared frozen prefix would change "
                             "(set freeze.unfreeze_every_steps=0)")
        object.__setattr__(self, "members", tuple(self.members))

    @property
    def depth(self) -> int:
        return self.setup.freeze.frozen_depth


@flax.struct.dataclass
class SweepState:
    """Every leaf has a leading member axis (K)."""
    step: jax.Array
    params: Any             # the trainable suffix: stages [d, end)
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    hyper: dict[str, jax.Array]


@dataclasses.dataclass
class SweepResult:
    state: SweepState                      # host-side stack, one logical copy
    shared: dict[str, Any]                 # the frozen prefix's variables
    start_step: int
    step: int
    final_evals: list[dict[str, Any]] | None   # per member, at num_steps
    steps_per_s: float | None              # steady state, all members together
    stage_names: tuple[str, ...] = ()

    def member_variables(self, i: int) -> dict[str, Any]:
        """Member ``i``'s full variables (prefix and its suffix), as a single run's."""
        return merge(self.shared, {"params": jax.tree.map(lambda x: np.asarray(x[i]), self.state.params),
                                   "batch_stats": jax.tree.map(lambda x: np.asarray(x[i]), self.state.batch_stats)})


# --------------------------------------------------------------------------- splitting the model
def split(variables: Mapping[str, Any], stage_names: Sequence[str], depth: int) -> tuple[dict, dict]:
    """(prefix, suffix) variables: top-level entries of stages ``< depth`` and the rest."""
    frozen = set(stage_names[:depth])
    pre, suf = {}, {}
    for col in ("params", "batch_stats"):
        tree = variables.get(col, {})
        unknown = [k for k in tree if k not in stage_names]
        if unknown:
            raise ValueError(f"variables {col}/{unknown[0]} is not a stage of {tuple(stage_names)}")
        pre[col] = {k: v for k, v in tree.items() if k in frozen}
        suf[col] = {k: v for k, v in tree.items() if k not in frozen}
    return pre, suf


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {col: {**a.get(col, {}), **b.get(col, {})} for col in ("params", "batch_stats")}


class _Captured(Exception):
    def __init__(self, value: Any):
        super().__init__("prefix output")
        self.value = value


def _stage_call(context: Any, names: Sequence[str]) -> bool:
    path = context.module.path
    return context.method_name == "__call__" and len(path) == 1 and path[0] in names


def prefix_apply(model: Any, depth: int, shared: Mapping[str, Any], images: jax.Array, train: bool) -> Any:
    """The output of stage ``depth - 1`` (None when nothing is frozen): the frozen prefix, once."""
    if depth == 0:
        return None
    last = model.stage_names[depth - 1]

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _stage_call(context, (last,)):
            raise _Captured(out)
        return out
    try:
        with nn.intercept_methods(capture):
            model.apply(shared, images, train=train)
    except _Captured as c:
        return c.value
    raise ValueError(f"{type(model).__name__} has no top-level module {last!r}: cannot share its prefix")


def suffix_apply(model: Any, depth: int, variables: Mapping[str, Any], images: jax.Array, features: Any,
                 **kwargs: Any) -> Any:
    """``model.apply`` with stages ``< depth`` replaced by ``features`` (the prefix's output)."""
    if depth == 0:
        return model.apply(variables, images, **kwargs)
    frozen, last = model.stage_names[:depth], model.stage_names[depth - 1]

    def replace(next_fun, args, kwargs_, context):
        if _stage_call(context, frozen):
            return features if context.module.path[0] == last else args[0]
        return next_fun(*args, **kwargs_)
    with nn.intercept_methods(replace):
        return model.apply(variables, images, **kwargs)


# --------------------------------------------------------------------------- the step
@dataclasses.dataclass(frozen=True)
class _Program:
    model: Any
    depth: int
    spec: FreezeSpec          # the frozen set restricted to the suffix's leaves
    like: OptimConfig         # decides the optimizer chain's parts
    num_steps: int
    smoothing: bool
    frozen_stats: frozenset[str]
    batching: str

    def optimizer(self, params: Any, hyper: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
        cfg = self.like if hyper is None else dataclasses.replace(
            self.like, learning_rate=hyper["learning_rate"], weight_decay=hyper["weight_decay"],
            momentum=hyper["momentum"])
        return make_optimizer(cfg, self.spec, params, self.num_steps, like=self.like)

    def each(self, fn: Callable, *stacked: Any) -> Any:
        """``fn`` over the member axis of ``stacked``: vmapped, or unrolled one member after another."""
        if self.batching == "vmap":
            return jax.vmap(fn)(*stacked)
        k = jax.tree.leaves(stacked)[0].shape[0]
        outs = [fn(*jax.tree.map(lambda x: x[i], stacked)) for i in range(k)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _loss(logits: jax.Array, labels: jax.Array, smoothing: jax.Array | None) -> jax.Array:
    """``step.cross_entropy`` with a traced label smoothing (0 gives the same targets)."""
    if smoothing is None:
        return cross_entropy(logits, labels)
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: SweepState, shared: Any, batch: Mapping[str, jax.Array], *, program: _Program,
               axis_name: str | None, pmean_stats: bool) -> tuple[SweepState, dict[str, jax.Array]]:
    """One optimizer step of every member; metrics (K,) means over the global batch."""
    features = prefix_apply(program.model, program.depth, shared, batch["image"], train=True)

    def member(params, stats, opt_state, rng, step, hyper):
        key = jax.random.fold_in(rng, step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

        def loss_fn(p):
            logits, updates = suffix_apply(program.model, program.depth, {"params": p, "batch_stats": stats},
                                           batch["image"], features, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": key})
            loss = _loss(logits, batch["label"], hyper["label_smoothing"] if program.smoothing else None).mean()
            return loss, (logits, updates.get("batch_stats", stats))

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        top1, top5 = _correct(logits, batch["label"])
        metrics = {"loss": loss, "top1": top1.mean(), "top5": top5.mean()}
        if axis_name is not None:
            grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
            if pmean_stats:
                new_stats = jax.lax.pmean(new_stats, axis_name)
        updates, opt_state = program.optimizer(params, hyper).update(grads, opt_state, params)
        new_stats = restore_frozen_stats(stats, new_stats, program.frozen_stats)
        return optax.apply_updates(params, updates), new_stats, opt_state, step + 1, metrics

    params, stats, opt_state, step, metrics = program.each(
        member, state.params, state.batch_stats, state.opt_state, state.rng, state.step, state.hyper)
    return state.replace(params=params, batch_stats=stats, opt_state=opt_state, step=step), metrics


def eval_step(params: Any, stats: Any, shared: Any, batch: Mapping[str, jax.Array], *, program: _Program,
              axis_name: str | None) -> dict[str, jax.Array]:
    """Per-member sums over ``batch["mask"]`` (see ``step.eval_step``), each (K,)."""
    features = prefix_apply(program.model, program.depth, shared, batch["image"], train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32)).astype(jnp.float32)

    def member(p, s):
        logits = suffix_apply(program.model, program.depth, {"params": p, "batch_stats": s}, batch["image"],
                              features, train=False)
        top1, top5 = _correct(logits, batch["label"])
        return {"loss_sum": (cross_entropy(logits, batch["label"]) * mask).sum(), "correct1": (top1 * mask).sum(),
                "correct5": (top5 * mask).sum(), "count": mask.sum()}
    sums = program.each(member, params, stats)
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


# --------------------------------------------------------------------------- layouts
class _Layout:
    """Where the stack lives: like one run's state under ``DataParallel`` (member axis replicated,
    batch split), or with the member axis split over the devices and the batch replicated."""

    def __init__(self, dp: DataParallel, shard_members: bool, k: int):
        self.dp, self.shard = dp, shard_members
        if shard_members:
            devices = list(dp.mesh.devices.flat) if dp.kind != "none" else jax.devices()
            if k % len(devices):
                raise ValueError(f"{k} members do not split over {len(devices)} devices; use a multiple of "
                                 f"{len(devices)} members, or split the batch instead")
            self.mesh = Mesh(np.asarray(devices), (MEMBERS,))

    @property
    def axis_name(self) -> str | None:
        return None if self.shard else self.dp.axis_name

    def put_state(self, tree: Any) -> Any:
        if self.shard:
            return jax.device_put(jax.tree.map(np.asarray, tree), NamedSharding(self.mesh, P(MEMBERS)))
        return self.dp.put_state(tree)

    def put_shared(self, tree: Any) -> Any:
        if self.shard:
            return jax.device_put(jax.tree.map(np.asarray, tree), NamedSharding(self.mesh, P()))
        return self.dp.put_state(tree)

    def put_batch(self, batch: Mapping[str, np.ndarray]) -> Any:
        if self.shard:
            return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, NamedSharding(self.mesh, P()))
        return self.dp.put_batch(dict(batch))

    def get(self, tree: Any) -> Any:
        return tree if self.shard else self.dp.get(tree)

    def restore_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(MEMBERS)) if self.shard else self.dp.state_sharding()

    def wrap(self, fn: Callable, n_state: int, donate: bool) -> Callable:
        """Compile ``fn(*state_args, shared, batch)``; ``n_state`` leading arguments carry the member axis."""
        donate_argnums = (0,) if donate else ()
        if self.shard:
            specs = (*(P(MEMBERS),) * n_state, P(), P())
            return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=P(MEMBERS), check_vma=False),
                           donate_argnums=donate_argnums)
        if self.dp.axis_name is None:
            return jax.jit(fn, donate_argnums=donate_argnums)
        if self.dp.kind == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=list(self.dp.mesh.devices.flat),
                            donate_argnums=donate_argnums)
        specs = (*(P(),) * n_state, P(), P(AXIS))
        return jax.jit(jax.shard_map(fn, mesh=self.dp.mesh, in_specs=specs, out_specs=P(), check_vma=False),
                       donate_argnums=donate_argnums)


# --------------------------------------------------------------------------- building
def structure(optims: Sequence[OptimConfig]) -> OptimConfig:
    """The chain every member's optimizer fits in; fields other than :data:`HYPER` must agree."""
    base = optims[0]
    for o in optims[1:]:
        for f in dataclasses.fields(OptimConfig):
            if f.name not in HYPER and getattr(o, f.name) != getattr(base, f.name):
                raise ValueError(f"sweep members differ in optim.{f.name} ({getattr(base, f.name)!r} vs "
                                 f"{getattr(o, f.name)!r}), which changes the optimizer's structure")
    return dataclasses.replace(base, weight_decay=max((abs(o.weight_decay) for o in optims), key=float),
                               momentum=max((abs(o.momentum) for o in optims), key=float))


def suffix_spec(spec: FreezeSpec, params: Any) -> FreezeSpec:
    """``spec`` for the suffix's parameters alone: regexes that only matched prefix leaves dropped."""
    paths = leaf_paths(params)
    keep = lambda pat: any(re.search(pat, p) for p in paths)  # noqa: E731
    return dataclasses.replace(spec, patterns=tuple(p for p in spec.patterns if keep(p)),
                               lr_mults=tuple((p, m) for p, m in spec.lr_mults if keep(p)))


def batching_for(requested: str, stage_names: Sequence[str], depth: int) -> str:
    """``auto``: vmap on accelerators or when only the head trains, the unrolled loop otherwise.

    On CPU the vmapped convolutional suffix is much faster (benchmarks/RESULTS.md) but does not
    reproduce separate runs to 1e-5 (its batched convolutions sum in another order, and a few
    training steps amplify that); the loop does, so it stays the default there until that is settled.
    """
    if requested != "auto":
        return requested
    head_only = depth == len(stage_names) - 1
    return "vmap" if head_only or jax.default_backend() != "cpu" else "loop"


def _program(sweep: Sweep, suffix_params: Any, batch_stats: Any) -> _Program:
    s = sweep.setup
    depth = sweep.depth
    spec = suffix_spec(s.freeze, suffix_params)
    axis = None if sweep.shard_members else s.parallel.bn_axis_name
    full_stats = spec.frozen_stats(suffix_params, batch_stats)
    return _Program(model=s.model.for_training(depth, axis), depth=depth, spec=spec,
                    like=structure([m.optim for m in sweep.members]), num_steps=s.num_steps,
                    smoothing=any(m.label_smoothing for m in sweep.members), frozen_stats=full_stats,
                    batching=batching_for(sweep.batching, s.model.stage_names, depth))


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def initial(sweep: Sweep) -> tuple[dict[str, Any], SweepState, _Program]:
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


# --------------------------------------------------------------------------- the loop
@jax.jit
def _accumulate(acc: dict, metrics: dict) -> dict:
    return {**{k: acc[k] + metrics[k] for k in metrics}, "n": acc["n"] + 1}


def _empty(k: int) -> dict:
    z = jnp.zeros((k,), jnp.float32)
    return {"loss": z, "top1": z, "top5": z, "n": jnp.zeros((), jnp.int32)}


def evaluate(layout: _Layout, fn: Callable, state: SweepState, shared: Any,
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
    ``cadence.keep_checkpoints``."""
    s, cad = sweep.setup, sweep.setup.cadence
    log = log or loop.JsonlLogger(os.path.join(workdir, "metrics.jsonl") if workdir else None)
    k = len(sweep.members)
    layout = _Layout(s.parallel, sweep.shard_members, k)
    shared, init_state, program = initial(sweep)
    axis = layout.axis_name
    train = layout.wrap(lambda st, sh, b: train_step(st, sh, b, program=program, axis_name=axis,
                                                     pmean_stats=not s.parallel.sync_bn), 1, donate=True)
    evaluate_fn = layout.wrap(lambda p, st, sh, b: eval_step(p, st, sh, b, program=program, axis_name=axis), 2,
                              donate=False)
    schedules = [make_schedule(m.optim, s.num_steps) for m in sweep.members]
    ckpt = (Checkpointer(os.path.join(workdir, "checkpoints"), keep=cad.keep_checkpoints, best_metric=None)
            if workdir and cad.checkpoint_every else None)
    with ckpt or contextlib.nullcontext():
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
                if done == end or done % cad.log_every == 0:
                    host = jax.device_get(acc)
                    n = max(int(host["n"]), 1)
                    log({"split": "train", "step": done, **{m: (host[m] / n).tolist() for m in ("loss", "top1", "top5")},
                         "lr": [float(f(done - 1)) for f in schedules]})
                    acc = _empty(k)
                if s.eval_data is not None and (done == s.num_steps or (cad.eval_every and done % cad.eval_every == 0)):
                    with clock.paused():
                        evals = evaluate(layout, evaluate_fn, state, shared_dev, s.eval_data)
                        final = {"step": done, "members": evals}
                        log({"split": "eval", "step": done,
                             **{m: [e[m] for e in evals] for m in ("loss", "top1", "top5", "count")}})
                if ckpt and (done == end or done % cad.checkpoint_every == 0):
                    with clock.paused():
                        ckpt.save(done, state_items(layout.get(state)),
                                  {"data_position": done, "frozen_depth": sweep.depth, "members": k})
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        steps_per_s = clock.rate(state, end - start)
        if start == end == s.num_steps and s.eval_data is not None:   # finished earlier: report it
            final = {"step": end, "members": evaluate(layout, evaluate_fn, state, shared_dev, s.eval_data)}
        if end < s.num_steps:
            log({"event": "stopped", "step": end})
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


__all__ = ["BATCHINGS", "HYPER", "Member", "Sweep", "SweepResult", "SweepState", "evaluate", "fit", "initial",
           "merge", "prefix_apply", "split", "suffix_apply", "train_step"]
