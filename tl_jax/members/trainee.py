"""A sweep as a ``loop.Trainee``: the frozen prefix once per batch, then ``step.train_step`` mapped over members.

``loop.fit`` trains it like any run (preemption, checkpoints, evaluation, logs and the
non-finite-loss policy are the loop's); this module only says what a member is: the suffix of the
model (``input_stage`` = the first stage after the shared prefix), its variables, optimizer state,
rng and hyperparameters, stacked along a leading member axis, and one step that maps the single
run's ``tl_jax.step.train_step`` over that axis (vmapped, or unrolled one member after another).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import loop, step as step_lib
from tl_jax.freeze import FreezeSpec
from tl_jax.members.layout import Layout
from tl_jax.members.state import HYPER, Sweep, SweepResult, SweepState, split
from tl_jax.optim import OptimConfig, make_optimizer, make_schedule
from tl_jax.tree import leaf_paths


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every member shares: the prefix model, the suffix model and the optimizer's structure."""
    prefix: Any               # the model with its frozen stages, run up to the first suffix stage
    suffix: Any               # the same model entered at that stage (``input_stage``)
    depth: int                # stages in the shared prefix
    spec: FreezeSpec          # the frozen set restricted to the suffix's leaves
    like: OptimConfig         # decides the optimizer chain's parts
    num_steps: int
    smoothing: bool
    frozen_stats: frozenset[str]
    batching: str

    def features(self, shared: Any, images: jax.Array) -> jax.Array:
        """The suffix's input: the prefix's output, computed once for every member."""
        if self.depth == 0:
            return images
        return self.prefix.apply(shared, images, train=True, stop_at=self.prefix.stage_names[self.depth])

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


def train_step(state: SweepState, shared: Any, batch: Mapping[str, jax.Array], *, plan: Plan,
               axis_name: str | None, pmean_stats: bool) -> tuple[SweepState, dict[str, jax.Array]]:
    """One optimizer step of every member (``step.train_step`` per member); metrics (K,)."""
    inputs = {**batch, "image": plan.features(shared, batch["image"])}

    def member(params, stats, opt_state, rng, count, hyper):
        one = step_lib.TrainState(step=count, params=params, batch_stats=stats, opt_state=opt_state, rng=rng,
                                  apply_fn=plan.suffix.apply, tx=plan.optimizer(params, hyper))
        new, metrics = step_lib.train_step(
            one, inputs, label_smoothing=hyper["label_smoothing"] if plan.smoothing else 0.0, axis_name=axis_name,
            pmean_stats=pmean_stats, frozen_stats=plan.frozen_stats)
        return new.params, new.batch_stats, new.opt_state, new.step, metrics

    params, stats, opt_state, count, metrics = plan.each(
        member, state.params, state.batch_stats, state.opt_state, state.rng, state.step, state.hyper)
    return state.replace(params=params, batch_stats=stats, opt_state=opt_state, step=count), metrics


def eval_step(params: Any, stats: Any, shared: Any, batch: Mapping[str, jax.Array], *, plan: Plan,
              axis_name: str | None) -> dict[str, jax.Array]:
    """Per-member sums of ``step.eval_step``, each (K,)."""
    inputs = {**batch, "image": plan.features(shared, batch["image"])}
    return plan.each(lambda p, s: step_lib.eval_step({"params": p, "batch_stats": s}, inputs,
                                                     apply_fn=plan.suffix.apply, axis_name=axis_name), params, stats)


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


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _equal(a: Any, b: Any) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(x is y or np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


class SweepRun:
    """A :class:`~tl_jax.members.state.Sweep` as a ``loop.Trainee`` (one phase: sweeps keep their frozen set)."""

    def __init__(self, sweep: Sweep):
        s = sweep.setup
        self.sweep, self.setup, self.members = sweep, s, len(sweep.members)
        self.layout = Layout(s.parallel, sweep.shard_members, self.members)
        self.shared, self._initial, self.plan = self._initial_stack()
        self._program: loop.Program | None = None

    def _initial_stack(self) -> tuple[dict[str, Any], SweepState, Plan]:
        sw, s = self.sweep, self.setup
        names, depth = tuple(s.model.stage_names), sw.depth
        shared, _ = split(s.variables, names, depth)
        suffixes = []
        for i, m in enumerate(sw.members):
            pre, suf = split(m.variables if m.variables is not None else s.variables, names, depth)
            if m.variables is not None and not _equal(pre, shared):
                raise ValueError(f"sweep member {i} has another frozen prefix than the others (its seed changes the "
                                 f"initialisation of frozen stages?): members may differ in their trainable stages only")
            suffixes.append(suf)
        params0, stats0 = suffixes[0]["params"], suffixes[0]["batch_stats"]
        spec = suffix_spec(s.freeze, params0)
        axis = None if sw.shard_members else s.parallel.bn_axis_name
        model = s.model.for_training(s.freeze.frozen_stages, axis)
        plan = Plan(prefix=model, suffix=model.clone(input_stage=names[depth]) if depth else model, depth=depth,
                    spec=spec, like=structure([m.optim for m in sw.members]), num_steps=s.num_steps,
                    smoothing=any(m.label_smoothing for m in sw.members),
                    frozen_stats=spec.frozen_stats(params0, stats0), batching=sw.batching)
        params = _stack([x["params"] for x in suffixes])
        tx = plan.optimizer(params0)
        hyper = {"learning_rate": [m.optim.learning_rate for m in sw.members],
                 "weight_decay": [m.optim.weight_decay for m in sw.members],
                 "momentum": [m.optim.momentum for m in sw.members],
                 "label_smoothing": [m.label_smoothing for m in sw.members]}
        state = SweepState(step=np.zeros(self.members, np.int32), params=params,
                           batch_stats=_stack([x["batch_stats"] for x in suffixes]),
                           opt_state=jax.device_get(jax.vmap(tx.init)(params)),
                           rng=np.stack([np.asarray(jax.random.PRNGKey(m.seed)) for m in sw.members]),
                           hyper={k: np.asarray(v, np.float32) for k, v in hyper.items()})
        return shared, state, plan

    def program(self, step: int) -> loop.Program:
        if self._program is None:
            plan, layout, axis = self.plan, self.layout, self.layout.axis_name
            pmean_stats = not self.setup.parallel.sync_bn
            train = layout.wrap(lambda st, sh, b: train_step(st, sh, b, plan=plan, axis_name=axis,
                                                             pmean_stats=pmean_stats), 1, donate=True)
            evaluate = layout.wrap(lambda p, st, sh, b: eval_step(p, st, sh, b, plan=plan, axis_name=axis), 2,
                                   donate=False)
            shared = layout.put_shared(self.shared)
            schedules = [make_schedule(m.optim, self.setup.num_steps) for m in self.sweep.members]
            self._program = loop.Program(
                0, tuple(self.setup.freeze.frozen_stages), lambda state, batch: train(state, shared, batch),
                lambda state, batch: evaluate(state.params, state.batch_stats, shared, batch),
                lambda step: [float(f(step)) for f in schedules])
        return self._program

    def initial_state(self, step: int) -> SweepState:
        return self._initial

    def repartition(self, state: SweepState, program: loop.Program) -> SweepState:
        raise AssertionError("a sweep has one phase")   # Sweep refuses changing frozen sets

    def items(self, state: SweepState) -> dict[str, Any]:
        """The stack as checkpoint items (the hyperparameters come from the config, not the checkpoint)."""
        return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
                "progress": {"step": state.step, "rng": state.rng}}

    def from_items(self, template: SweepState, items: Mapping[str, Any]) -> SweepState:
        """The restored stack, with the hyperparameters of the config (not stored)."""
        return self._initial.replace(params=items["params"], batch_stats=items["batch_stats"],
                                opt_state=items["opt_state"], step=items["progress"]["step"],
                                rng=items["progress"]["rng"])

    def describe(self, step: int) -> dict[str, Any]:
        return {"members": self.members, "frozen_stages": list(self.setup.freeze.frozen_stages),
                "shared_stages": list(self.setup.model.stage_names[:self.sweep.depth]),
                "batching": self.plan.batching, "shard_members": self.sweep.shard_members,
                "devices": self.setup.parallel.num_devices}


def fit(sweep: Sweep, workdir: str | None = None, *, log: loop.Log | None = None,
        stop_at_step: int | None = None) -> SweepResult:
    """Train every member with ``loop.fit`` (records hold per-member lists; checkpoints the whole stack)."""
    trainee = SweepRun(sweep)
    res = loop.fit(trainee, workdir, log=log, stop_at_step=stop_at_step)
    return SweepResult(jax.device_get(res.state), trainee.shared, res.start_step, res.step, res.final_eval,
                       res.steps_per_s, tuple(sweep.setup.model.stage_names), res.dropped)
