"""What trains and how fast: one ``FreezeSpec`` gives the optimizer labels AND the model's frozen stages.

Freezing has two halves that must agree: the optimizer must hold no state for and apply no update
to frozen leaves (``optax.partition`` with ``set_to_zero``, built in ``tl_jax.optim``;
``optax.masked(adam, trainable)`` alone would pass frozen leaves the raw gradient), and the model
must run the BatchNorm of frozen stages on running averages and cut the gradient below the lowest
trainable stage (the model's ``frozen_stages``, set through its ``for_training``). ``FreezeSpec`` is
the single source of truth for both.

Which stages train, in one of three ways (one mechanism underneath: a frozen flag per stage):

* ``frozen_depth=k``: the first ``k`` stages of ``stage_names`` are frozen (0: full fine-tune;
  ``len(stage_names) - 1`` or ``-1``: only the head trains).
* ``trainable_stages``: these stages train, every other one is frozen (surgical fine-tuning, e.g.
  ``("layer1",)``; the head may be frozen too, as long as something trains).
* ``schedule``: phases ``(start_step, trainable)``, ``trainable`` a frozen depth or a tuple of stage
  names, starting at step 0 with increasing steps. LP-FT is ``((0, -1), (N, 0))``; gradual
  unfreezing (``unfreeze_every=N`` down to ``unfreeze_until``) is written as such a schedule.
  ``schedule_learning_rates`` (one per phase) restarts the learning-rate schedule at each phase
  with that peak; without it one schedule runs over the whole run. Changing the frozen set
  changes the model and the optimizer partition, so ``tl_jax.loop.fit`` rebuilds the step at
  each phase and carries the optimizer state of leaves that stay trainable.

``patterns`` (regexes, ``re.search``, over '/'-joined parameter paths such as
``layer3/block0/conv1/kernel``) freeze leaves for the optimizer only: their BatchNorm still
normalises with batch statistics in training (the model switches BatchNorm per stage), although
the statistics of a BatchNorm whose affine parameters are all frozen are kept bit-identical.

``lr_mults`` are (regex, multiplier) pairs for discriminative learning rates; the first matching
regex wins, unmatched trainable leaves use 1.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

import jax

from tl_jax.tree import leaf_paths, path_str

FROZEN, TRAINABLE = "frozen", "trainable"
Trainable = int | tuple[str, ...]     # a frozen depth, or the names of the stages that train


def _check_matches(patterns: Iterable[str], paths: list[str], what: str) -> None:
    for pat in patterns:
        if not any(re.search(pat, p) for p in paths):
            sample = ", ".join(paths[:4])
            raise ValueError(f"{what} regex {pat!r} matches no parameter path (paths look like: {sample}, ...)")


@dataclasses.dataclass(frozen=True)
class Phase:
    """From step ``start`` (until the next phase) the stages ``frozen`` do not train."""
    start: int
    frozen: tuple[str, ...]
    learning_rate: float | None = None     # the phase's peak, restarting the schedule; None: one schedule


def frozen_for(stage_names: Sequence[str], trainable: Trainable) -> tuple[str, ...]:
    """The frozen stages meant by a frozen depth (``-1``: all but the head) or a tuple of trainable names."""
    names = tuple(stage_names)
    if isinstance(trainable, (tuple, list)):
        unknown = [s for s in trainable if s not in names]
        if unknown:
            raise ValueError(f"no stage {unknown[0]!r}; the stages are {', '.join(names)}")
        return tuple(s for s in names if s not in trainable)
    depth = len(names) - 1 if int(trainable) == -1 else int(trainable)
    if not 0 <= depth <= len(names) - 1:
        raise ValueError(f"frozen_depth={trainable} out of range for stages {names}: use 0..{len(names) - 1} "
                         f"(0: full fine-tune, {len(names) - 1} or -1: only the head trains)")
    return names[:depth]


@dataclasses.dataclass(frozen=True)
class FreezeSpec:
    """Frozen stages (per phase), frozen leaves and per-leaf learning-rate multipliers (see module docstring)."""
    stage_names: tuple[str, ...]
    frozen_depth: int = 0
    patterns: tuple[str, ...] = ()
    lr_mults: tuple[tuple[str, float], ...] = ()
    unfreeze_every: int = 0
    unfreeze_until: int = 0
    trainable_stages: tuple[str, ...] = ()
    schedule: tuple[tuple[int, Trainable], ...] = ()
    schedule_learning_rates: tuple[float, ...] = ()
    phases: tuple[Phase, ...] = dataclasses.field(init=False, default=())

    def __post_init__(self) -> None:
        names = tuple(self.stage_names)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("stage_names", names)
        ways = [w for w, on in (("frozen_depth", self.frozen_depth), ("trainable_stages", self.trainable_stages),
                                ("schedule", self.schedule), ("unfreeze_every", self.unfreeze_every)) if on]
        if len(ways) > 1 and ways != ["frozen_depth", "unfreeze_every"]:
            raise ValueError(f"freeze: give one of frozen_depth, trainable_stages and schedule, not {' and '.join(ways)}")
        if self.schedule:
            schedule = tuple((int(s), tuple(t) if isinstance(t, (tuple, list)) else int(t)) for s, t in self.schedule)
        elif self.trainable_stages:
            schedule = ((0, tuple(self.trainable_stages)),)
        else:
            schedule = self._unfreezing(len(frozen_for(names, self.frozen_depth)))
        starts = [s for s, _ in schedule]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"freeze.schedule: phases must start at step 0 with increasing steps; got starts {starts}")
        lrs = tuple(float(x) for x in self.schedule_learning_rates)
        if lrs and len(lrs) != len(schedule):
            raise ValueError(f"freeze.schedule_learning_rates has {len(lrs)} values for {len(schedule)} phases")
        phases = tuple(Phase(s, frozen_for(names, t), lrs[i] if lrs else None) for i, (s, t) in enumerate(schedule))
        for p in phases:
            if len(p.frozen) == len(names):
                raise ValueError(f"freeze: nothing trains from step {p.start} (every stage is frozen); "
                                 f"leave at least one of {', '.join(names)} trainable")
        for pat in (*self.patterns, *(p for p, _ in self.lr_mults)):
            re.compile(pat)
        set_("phases", phases)
        if self.frozen_depth == -1:
            set_("frozen_depth", len(names) - 1)
        set_("trainable_stages", tuple(self.trainable_stages))
        set_("schedule", schedule if self.schedule else ())
        set_("patterns", tuple(self.patterns))
        set_("lr_mults", tuple((p, float(m)) for p, m in self.lr_mults))
        set_("schedule_learning_rates", lrs)

    def _unfreezing(self, depth: int) -> tuple[tuple[int, int], ...]:
        """Gradual unfreezing as a schedule: one more stage from the top every ``unfreeze_every`` steps."""
        if self.unfreeze_every < 0 or not 0 <= self.unfreeze_until <= depth:
            raise ValueError(f"need unfreeze_every >= 0 and 0 <= unfreeze_until <= frozen_depth ({depth}); "
                             f"got {self.unfreeze_every}, {self.unfreeze_until}")
        if not self.unfreeze_every:
            return ((0, depth),)
        return tuple((i * self.unfreeze_every, d) for i, d in enumerate(range(depth, self.unfreeze_until - 1, -1)))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any, stage_names: Sequence[str]) -> "FreezeSpec":
        """From ``config.freeze`` (see ``configs/default.py``); ``lp_ft_steps=N`` is ``schedule=((0, -1), (N, 0))``."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        schedule = tuple(tuple(p) for p in (get("schedule", ()) or ()))
        lp_ft = int(get("lp_ft_steps", 0) or 0)
        if lp_ft:
            if schedule:
                raise ValueError("freeze: give lp_ft_steps or schedule, not both")
            schedule = ((0, -1), (lp_ft, 0))
        return cls(tuple(stage_names), int(get("frozen_depth", 0)), tuple(get("patterns", ()) or ()),
                   tuple(tuple(x) for x in (get("lr_mults", ()) or ())),
                   int(get("unfreeze_every_steps", 0) or 0), int(get("unfreeze_until", 0) or 0),
                   tuple(get("trainable_stages", ()) or ()), schedule,
                   tuple(get("schedule_learning_rates", ()) or ()))

    # --- phases -----------------------------------------------------------
    @property
    def prefix_depth(self) -> int:
        """How many stages from the input on are frozen (first phase): below the first trainable stage
        nothing trains, so there is no backward pass and the activations there can be computed once."""
        frozen = self.frozen_stages
        return next((i for i, s in enumerate(self.stage_names) if s not in frozen), len(self.stage_names))

    def phase_index(self, step: int) -> int:
        return max(i for i, p in enumerate(self.phases) if p.start <= int(step))

    def phase_end(self, index: int, num_steps: int) -> int:
        return self.phases[index + 1].start if index + 1 < len(self.phases) else num_steps

    def at_step(self, step: int) -> "FreezeSpec":
        """The spec in force at ``step``: one phase, no schedule."""
        p = self.phases[self.phase_index(step)]
        trainable = tuple(s for s in self.stage_names if s not in p.frozen)
        return FreezeSpec(self.stage_names, patterns=self.patterns, lr_mults=self.lr_mults,
                          trainable_stages=trainable)

    @property
    def frozen_stages(self) -> tuple[str, ...]:
        """The stages frozen in the first phase (``at_step`` gives any other)."""
        return self.phases[0].frozen

    @property
    def changes(self) -> bool:
        """Whether the frozen set changes during training."""
        return len(self.phases) > 1

    @property
    def head_only(self) -> bool:
        """Only the head trains (every phase), with no regex freezing."""
        return all(p.frozen == self.stage_names[:-1] for p in self.phases)

    # --- the optimizer half ---------------------------------------------
    def is_frozen(self, path: str) -> bool:
        stage = path.split("/", 1)[0]
        if stage not in self.stage_names:
            raise ValueError(f"parameter {path!r} is not under a stage of {self.stage_names}")
        return stage in self.frozen_stages or any(re.search(p, path) for p in self.patterns)

    def check(self, params: Any) -> None:
        """Fail early on regexes that match nothing (almost always a typo) and on runs where nothing trains."""
        paths = leaf_paths(params)
        _check_matches(self.patterns, paths, "freeze")
        _check_matches([p for p, _ in self.lr_mults], paths, "lr_mults")
        for i, p in enumerate(self.phases):
            spec = self if not self.changes else self.at_step(p.start)
            if all(spec.is_frozen(q) for q in paths):
                raise ValueError(f"freeze: nothing trains from step {p.start}: every parameter is frozen (stages "
                                 f"{', '.join(p.frozen) or 'none'} and the patterns); leave something trainable")

    def labels(self, params: Any) -> Any:
        """``"frozen"`` / ``"trainable"`` per leaf: the ``optax.partition`` labels."""
        self.check(params)
        return jax.tree_util.tree_map_with_path(
            lambda p, _: FROZEN if self.is_frozen(path_str(p)) else TRAINABLE, params)

    def lr_mult(self, path: str) -> float:
        return next((m for pat, m in self.lr_mults if re.search(pat, path)), 1.0)

    def frozen_stats(self, params: Any, batch_stats: Any) -> frozenset[str]:
        """'/'-paths of batch_stats leaves that must not move: those of frozen stages and of
        BatchNorm layers whose affine parameters are all frozen (by stage or pattern)."""
        frozen_modules: dict[str, bool] = {}
        for p in leaf_paths(params):
            module = p.rsplit("/", 1)[0]
            frozen_modules[module] = frozen_modules.get(module, True) and self.is_frozen(p)
        return frozenset(p for p in leaf_paths(batch_stats)
                         if p.split("/", 1)[0] in self.frozen_stages or frozen_modules.get(p.rsplit("/", 1)[0], False))

    def summary(self, params: Any) -> dict[str, int]:
        """Leaf and element counts, trainable vs frozen (for logs)."""
        out = {"trainable_params": 0, "frozen_params": 0}
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            key = "frozen_params" if self.is_frozen(path_str(p)) else "trainable_params"
            out[key] += int(x.size)
        return out
