"""What a sweep is made of: its members, the stacked training state, and the result."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import numpy as np

from tl_jax import loop
from tl_jax.optim import OptimConfig

# Per-member numbers that reach the step as arrays (they keep the computation's shape).
HYPER = ("learning_rate", "weight_decay", "momentum", "label_smoothing")
BATCHINGS = ("vmap", "loop")


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
    batching: str = "vmap"
    shard_members: bool = False

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a sweep needs at least one member")
        if self.batching not in BATCHINGS:
            raise ValueError(f"unknown batching {self.batching!r}; choose one of {BATCHINGS}")
        if self.setup.freeze.changes:
            raise ValueError("a sweep cannot change its frozen stages during training (gradual unfreezing, "
                             "freeze.schedule, LP-FT): the shared frozen prefix would change; train those separately")
        object.__setattr__(self, "members", tuple(self.members))

    @property
    def depth(self) -> int:
        """Stages computed once per batch for every member: the leading frozen stages."""
        return self.setup.freeze.prefix_depth


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
    final_evals: list[dict[str, Any] | None] | None   # per member, at num_steps (None: dropped)
    steps_per_s: float | None              # steady state, all members together
    stage_names: tuple[str, ...] = ()
    dropped: tuple[int, ...] = ()          # members dropped for a non-finite loss

    def member_variables(self, i: int) -> dict[str, Any]:
        """Member ``i``'s full variables (prefix and its suffix), as a single run's."""
        return merge(self.shared, {"params": jax.tree.map(lambda x: np.asarray(x[i]), self.state.params),
                                   "batch_stats": jax.tree.map(lambda x: np.asarray(x[i]), self.state.batch_stats)})


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
