"""What trains and how fast: one ``FreezeSpec`` gives the optimizer labels AND the model kwargs.

Freezing has two halves that must agree: the optimizer must hold no state for and
apply no update to frozen leaves (``optax.partition`` with ``set_to_zero``, built in
``tl_jax.optim``; ``optax.masked(adam, trainable)`` alone would pass frozen leaves the raw
gradient), and the model must run the BatchNorm of frozen stages on running averages
and cut the gradient at the boundary (the model's own ``frozen_depth``, set through
its ``for_training``). ``FreezeSpec`` is the single source of truth for both.

Three ways to say what is frozen, combinable:

* ``frozen_depth=k``: the first ``k`` stages of ``stage_names`` (0: full fine-tune,
  ``len(stage_names) - 1``: linear probe, only the head trains; ``-1`` means the latter).
* ``patterns``: regexes (``re.search``) over '/'-joined parameter paths such as
  ``layer3/block0/conv1/kernel``. These freeze leaves for the optimizer only;
  the backward through them is still computed when earlier stages train, and
  their weight gradients are dropped by XLA once ``set_to_zero`` discards them.
  BatchNorm statistics: a BatchNorm layer whose affine parameters are all
  frozen by a pattern keeps its running statistics bit-identical (the train step
  puts the old values back), but in training it still normalises with batch
  statistics, because the model switches BatchNorm to running averages per
  stage only. For inference-mode BatchNorm freeze by depth.
* gradual unfreezing: with ``unfreeze_every=N`` one more stage from the top of the
  frozen prefix becomes trainable every N steps, down to ``unfreeze_until``.
  Changing the frozen set changes the model and the optimizer partition, so the
  train step is rebuilt and recompiled at each change (``tl_jax.loop.fit`` does it).

``lr_mults`` are (regex, multiplier) pairs for discriminative learning rates; the
first matching regex wins, unmatched trainable leaves use 1.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

import jax

from tl_jax.tree import leaf_paths, path_str

FROZEN, TRAINABLE = "frozen", "trainable"


def _check_matches(patterns: Iterable[str], paths: list[str], what: str) -> None:
    for pat in patterns:
        if not any(re.search(pat, p) for p in paths):
            sample = ", ".join(paths[:4])
            raise ValueError(f"{what} regex {pat!r} matches no parameter path (paths look like: {sample}, ...)")


@dataclasses.dataclass(frozen=True)
class FreezeSpec:
    """Frozen stages/leaves and per-leaf learning-rate multipliers (see module docstring)."""
    stage_names: tuple[str, ...]
    frozen_depth: int = 0
    patterns: tuple[str, ...] = ()
    lr_mults: tuple[tuple[str, float], ...] = ()
    unfreeze_every: int = 0
    unfreeze_until: int = 0

    def __post_init__(self) -> None:
        n = len(self.stage_names)
        depth = n - 1 if self.frozen_depth == -1 else self.frozen_depth
        if not 0 <= depth <= n - 1:
            raise ValueError(f"frozen_depth={self.frozen_depth} out of range for stages {self.stage_names}: "
                             f"use 0..{n - 1} (0: full fine-tune, {n - 1} or -1: only the head trains)")
        if self.unfreeze_every < 0 or not 0 <= self.unfreeze_until <= depth:
            raise ValueError(f"need unfreeze_every >= 0 and 0 <= unfreeze_until <= frozen_depth ({depth}); "
                             f"got {self.unfreeze_every}, {self.unfreeze_until}")
        for pat in (*self.patterns, *(p for p, _ in self.lr_mults)):
            re.compile(pat)
        object.__setattr__(self, "frozen_depth", depth)
        object.__setattr__(self, "stage_names", tuple(self.stage_names))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "lr_mults", tuple((p, float(m)) for p, m in self.lr_mults))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any, stage_names: Sequence[str]) -> "FreezeSpec":
        """From ``config.freeze`` (fields frozen_depth, patterns, lr_mults, unfreeze_every_steps)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        return cls(tuple(stage_names), int(get("frozen_depth", 0)), tuple(get("patterns", ()) or ()),
                   tuple(tuple(x) for x in (get("lr_mults", ()) or ())),
                   int(get("unfreeze_every_steps", 0) or 0), int(get("unfreeze_until", 0) or 0))

    # --- gradual unfreezing -------------------------------------------------
    def depth_at(self, step: int) -> int:
        if not self.unfreeze_every:
            return self.frozen_depth
        return max(self.unfreeze_until, self.frozen_depth - int(step) // self.unfreeze_every)

    def at_step(self, step: int) -> "FreezeSpec":
        """The spec in force at ``step`` (a fixed spec, no further unfreezing)."""
        return dataclasses.replace(self, frozen_depth=self.depth_at(step), unfreeze_every=0, unfreeze_until=0)

    # --- the optimizer half ---------------------------------------------
    def is_frozen(self, path: str) -> bool:
        stage = path.split("/", 1)[0]
        if stage not in self.stage_names:
            raise ValueError(f"parameter {path!r} is not under a stage of {self.stage_names}")
        return (self.stage_names.index(stage) < self.frozen_depth
                or any(re.search(p, path) for p in self.patterns))

    def check(self, params: Any) -> None:
        """Fail early on regexes that match nothing (almost always a typo)."""
        paths = leaf_paths(params)
        _check_matches(self.patterns, paths, "freeze")
        _check_matches([p for p, _ in self.lr_mults], paths, "lr_mults")

    def labels(self, params: Any) -> Any:
        """``"frozen"`` / ``"trainable"`` per leaf: the ``optax.partition`` labels."""
        self.check(params)
        return jax.tree_util.tree_map_with_path(
            lambda p, _: FROZEN if self.is_frozen(path_str(p)) else TRAINABLE, params)

    def lr_mult(self, path: str) -> float:
        return next((m for pat, m in self.lr_mults if re.search(pat, path)), 1.0)

    def frozen_stats(self, params: Any, batch_stats: Any) -> frozenset[str]:
        """'/'-paths of batch_stats leaves that must not move: those of frozen stages and of
        BatchNorm layers whose affine parameters are all frozen (by depth or pattern)."""
        frozen_modules: dict[str, bool] = {}
        for p in leaf_paths(params):
            module = p.rsplit("/", 1)[0]
            frozen_modules[module] = frozen_modules.get(module, True) and self.is_frozen(p)
        keep = set()
        for p in leaf_paths(batch_stats):
            module, stage = p.rsplit("/", 1)[0], p.split("/", 1)[0]
            if (stage in self.stage_names and self.stage_names.index(stage) < self.frozen_depth) \
                    or frozen_modules.get(module, False):
                keep.add(p)
        return frozenset(keep)

    def summary(self, params: Any) -> dict[str, int]:
        """Leaf and element counts, trainable vs frozen (for logs)."""
        out = {"trainable_params": 0, "frozen_params": 0}
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            key = "frozen_params" if self.is_frozen(path_str(p)) else "trainable_params"
            out[key] += int(x.size)
        return out
