"""Pure train/eval steps over a ``TrainState``; written once for one device or a named data axis.

With ``axis_name`` set the step runs per device inside ``shard_map``/``pmap``
(``tl_jax.parallel``): gradients and metrics are averaged over the axis, trainable
BatchNorm averages its batch statistics through the model's ``bn_axis_name``.
Mixed precision is the model's business (``dtype=bfloat16`` with float32 params,
float32 BatchNorm statistics and float32 logits); the loss here is float32.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tl_jax.tree import path_str

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array          # raw uint32 key (checkpointable); per-step keys are folded from it
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, apply_fn: Callable, variables: Any, tx: optax.GradientTransformation,
               rng: jax.Array | int = 0) -> "TrainState":
        params = variables["params"]
        rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                   opt_state=tx.init(params), rng=rng, apply_fn=apply_fn, tx=tx)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, optionally with label smoothing (a number, or a
    traced one: a sweep's members each have theirs; smoothing 0 gives the same targets bit for bit)."""
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if not isinstance(label_smoothing, (int, float)) or label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def top_k_hits(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(top-1 hit, top-5 hit) per example, as float32."""
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    hits = topk == labels[:, None]
    return hits[:, 0].astype(jnp.float32), hits.any(axis=-1).astype(jnp.float32)


def restore_frozen_stats(old: Any, new: Any, frozen_stats: frozenset[str]) -> Any:
    if not frozen_stats:
        return new
    return jax.tree_util.tree_map_with_path(
        lambda p, o, n: o if path_str(p) in frozen_stats else n, old, new)


def train_step(state: TrainState, batch: Batch, *, label_smoothing: float | jax.Array = 0.0,
               axis_name: str | None = None, pmean_stats: bool = False,
               frozen_stats: frozenset[str] = frozenset()) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step: the loss, the gradients, the new BatchNorm statistics, the update.

    ``axis_name``: per device inside ``shard_map``/``pmap``; gradients and metrics are averaged over
    the axis, and with ``pmean_stats`` (BatchNorm not synced inside the model) so are the new running
    statistics, so that the replicas stay identical. ``frozen_stats``: batch_stats paths kept
    bit-identical (``FreezeSpec.frozen_stats``). Metrics (means over the global batch): ``loss``,
    ``top1``, ``top5``. A sweep (``tl_jax.members``) maps this same function over its members.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                         train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    top1, top5 = top_k_hits(logits, batch["label"])
    metrics = {"loss": loss, "top1": top1.mean(), "top5": top5.mean()}
    if axis_name is not None:
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        if pmean_stats:
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = restore_frozen_stats(state.batch_stats, batch_stats, frozen_stats)
    # Statistics keep their stored dtype: computed in float64 they would change the state's type after the
    # first step (a second compilation, and float64 statistics in the checkpoint).
    batch_stats = jax.tree.map(lambda new, old: new.astype(old.dtype), batch_stats, state.batch_stats)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def eval_step(variables: Any, batch: Batch, *, apply_fn: Callable, axis_name: str | None = None,
              ) -> dict[str, jax.Array]:
    """Sums over ``batch["mask"]`` (padding excluded) for exact evaluation:
    ``loss_sum``, ``correct1``, ``correct5``, ``count``. Divide after summing over batches.

    Takes the variables alone (``params``, ``batch_stats``): evaluating needs no optimizer."""
    logits = apply_fn(variables, batch["image"], train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32)).astype(jnp.float32)
    top1, top5 = top_k_hits(logits, batch["label"])
    sums = {"loss_sum": (cross_entropy(logits, batch["label"]) * mask).sum(), "correct1": (top1 * mask).sum(),
            "correct5": (top5 * mask).sum(), "count": mask.sum()}
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


def summarize_eval(sums: dict[str, Any]) -> dict[str, float]:
    """``loss``, ``top1``, ``top5`` (fractions) from summed eval metrics."""
    n = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / n, "top1": float(sums["correct1"]) / n,
            "top5": float(sums["correct5"]) / n, "count": int(sums["count"])}
