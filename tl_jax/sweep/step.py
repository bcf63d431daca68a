"""The sweep's pure steps: one optimizer step and one eval pass of every member, vmapped or unrolled."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer
from tl_jax.step import _correct, cross_entropy, restore_frozen_stats
from tl_jax.sweep.split import prefix_apply, suffix_apply
from tl_jax.sweep.state import HYPER, SweepState
from tl_jax.tree import leaf_paths


@dataclasses.dataclass(frozen=True)
class Program:
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


def train_step(state: SweepState, shared: Any, batch: Mapping[str, jax.Array], *, program: Program,
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


def eval_step(params: Any, stats: Any, shared: Any, batch: Mapping[str, jax.Array], *, program: Program,
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
