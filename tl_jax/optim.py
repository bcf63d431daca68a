"""The optax transformation for a ``FreezeSpec``: frozen leaves get ``set_to_zero`` and no state.

Layout::

    partition({"trainable": chain(clip, [decay,] scale_by_{sgd,adam}, [decay,] lr_mults, -lr schedule),
               "frozen":    set_to_zero()},
              labels)

Everything that reads gradients (global-norm clipping, weight decay, the moments)
lives inside the trainable branch, so it sees only trainable leaves: frozen leaves
hold no optimizer state and their gradients are dead code that XLA removes. (A
``clip_by_global_norm`` before the partition, or ``chain(adam, masked(set_to_zero))``,
would read every gradient and keep the full backward pass alive.)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import optax

from tl_jax.freeze import FROZEN, TRAINABLE, FreezeSpec
from tl_jax.tree import path_str

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyper-parameters (``config.optim``). ``learning_rate`` is the peak, for the global batch.

    ``weight_decay`` is decoupled for adamw and L2-on-the-gradient (torch style) for sgd;
    it applies to trainable kernels only (leaves with ndim > 1) unless ``decay_all``.
    ``grad_clip_norm`` 0 disables clipping; it clips the trainable gradients only.
    """
    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_all: bool = False
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any, **overrides: Any) -> "OptimConfig":
        """From a dict/ConfigDict, ignoring keys this class does not know (e.g. warmup_epochs)."""
        items = dict(cfg.items() if hasattr(cfg, "items") else vars(cfg))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**items, **overrides}.items() if k in known})


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then constant or cosine decay to 0 at ``total_steps``."""
    lr, warm = cfg.learning_rate, int(cfg.warmup_steps)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        main = optax.cosine_decay_schedule(lr, max(1, total_steps - warm))
    if not warm:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def phase_schedule(cfg: OptimConfig, spec: FreezeSpec, step: int, total_steps: int) -> optax.Schedule:
    """The learning rate in force at ``step``, as a function of the optimizer's update count (the global step).

    One schedule over the run, or, where ``spec.schedule_learning_rates`` gives each phase its peak,
    the schedule restarted at the phase's first step and run over the phase's steps (LP-FT's two phases
    each get their own warmup and decay)."""
    index = spec.phase_index(step)
    phase = spec.phases[index]
    if phase.learning_rate is None:
        return make_schedule(cfg, total_steps)
    first = phase.start
    schedule = make_schedule(dataclasses.replace(cfg, learning_rate=phase.learning_rate),
                             spec.phase_end(index, total_steps) - first)
    return lambda count: schedule(count - first)


def scale_by_lr_mults(spec: FreezeSpec) -> optax.GradientTransformation:
    """Stateless per-leaf multiplier from ``spec.lr_mults`` (decided at trace time from the path)."""
    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda p, u: u if spec.lr_mult(path_str(p)) == 1.0 else u * spec.lr_mult(path_str(p)), updates)
        return scaled, state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _decay_mask(cfg: OptimConfig):
    return None if cfg.decay_all else (lambda params: jax.tree.map(lambda x: x.ndim > 1, params))


def trainable_transform(cfg: OptimConfig, spec: FreezeSpec, total_steps: int, *,
                        like: OptimConfig | None = None, schedule: optax.Schedule | None = None,
                        ) -> optax.GradientTransformation:
    """The chain applied to trainable leaves only.

    ``like`` (a sweep, ``tl_jax.sweep``) decides which parts the chain has, so that ``cfg``'s learning
    rate, weight decay and momentum may be traced per-member values: a member whose weight decay or
    momentum is 0 inside a chain that has the part adds ``0 * x``, the same updates as without it.
    """
    shape = like or cfg
    parts = []
    if shape.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    decay = optax.add_decayed_weights(cfg.weight_decay, _decay_mask(cfg)) if shape.weight_decay else None
    if cfg.name == "sgd":
        parts += [decay] if decay else []
        if shape.momentum:
            parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    else:
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        parts += [decay] if decay else []
    if spec.lr_mults:
        parts.append(scale_by_lr_mults(spec))
    parts.append(optax.scale_by_learning_rate(schedule or make_schedule(cfg, total_steps)))
    return optax.chain(*parts)


def make_optimizer(cfg: OptimConfig | Mapping[str, Any], spec: FreezeSpec, params: Any,
                   total_steps: int, *, like: OptimConfig | None = None, schedule: optax.Schedule | None = None,
                   ) -> optax.GradientTransformation:
    """``optax.partition`` of the trainable chain and ``set_to_zero`` over ``spec.labels(params)``
    (``like``: see ``trainable_transform``; ``schedule``: the learning rate, default ``make_schedule``)."""
    if not isinstance(cfg, OptimConfig):
        cfg = OptimConfig.from_config(cfg)
    labels = spec.labels(params)
    return optax.partition({TRAINABLE: trainable_transform(cfg, spec, total_steps, like=like, schedule=schedule),
                            FROZEN: optax.set_to_zero()}, labels)


def transfer_opt_state(old: Any, new: Any) -> Any:
    """Carry optimizer state across a change of the frozen set (gradual unfreezing).

    Leaves of ``new`` whose key path and shape also exist in ``old`` take the old value
    (moments of leaves that stay trainable, step counts); newly trainable leaves keep
    their fresh initial state. ``optax.partition`` masks frozen leaves out of the
    trainable state, so a leaf's path is the same in both states.
    """
    old_leaves = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(old)[0]}

    def pick(p, x):
        o = old_leaves.get(path_str(p))
        return o if o is not None and getattr(o, "shape", None) == getattr(x, "shape", None) else x
    return jax.tree_util.tree_map_with_path(pick, new)
