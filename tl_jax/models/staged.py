"""What every port shares above its layers: a sequence of stages, each frozen or trainable, then a head.

A port (ResNet, VGG, Inception-V3) describes its backbone as an ordered list of ``(stage name,
function)`` plus how its features are pooled and how its head reads them; :func:`run` does the
rest, the same way for every family:

* **Freezing per stage.** ``frozen_stages`` names the stages whose parameters do not train. A
  frozen stage runs BatchNorm on its running averages (its statistics never move) and applies no
  dropout, wherever it sits. The gradient stops at the output of every stage of the leading
  frozen run (the stages below the lowest trainable one), so the compiled step has no backward
  pass there; a frozen stage *above* a trainable one passes the gradient through (its weight
  gradients are dropped by the optimizer's ``set_to_zero``).
* **Folding.** Where a stage runs BatchNorm on running averages (frozen in training, every stage
  in evaluation) and ``fold_frozen_bn`` is on, each convolution + BatchNorm is computed as one
  convolution with a folded kernel and bias (:func:`tl_jax.models.layers.conv_bn`).
* **Entering and leaving at a stage.** ``input_stage`` makes the model start at that stage: its
  input is what the stage before it returns (for ``"head"``: the pooled features), e.g. activations
  cached once for a frozen prefix. ``stop_at`` runs the stages before it and returns that input.
* **The ending.** Logits; the pooled features with ``return_features``; with ``return_stages`` an
  OrderedDict (its order survives ``jax.jit``) of every computed stage's output, ``"head"`` the logits.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD = "head"


@dataclasses.dataclass(frozen=True)
class StageMode:
    """How one stage runs in one call."""
    frozen: bool              # its parameters do not train
    running_average: bool     # BatchNorm normalises with its running statistics (frozen, or evaluation)
    fold: bool                # ... computed inside the preceding convolution
    deterministic: bool       # dropout off (frozen, or evaluation)


class Staged(nn.Module, kw_only=True):
    """Base of the ports: the fields every family shares, ``for_training`` and the per-stage mode.

    Attributes:
      num_classes: logits of the head; ``None`` builds no head (features only).
      frozen_stages: the stages whose parameters do not train (see the module docstring).
      bn_axis_name: mesh axis over which trainable BatchNorm averages batch statistics.
      fold_frozen_bn: compute conv + BatchNorm on running averages as one convolution.
      input_stage: the stage the input enters (None: the image enters the first stage).
      dtype, param_dtype: compute and parameter dtypes (BatchNorm statistics, logits and loss stay float32).
      in_channels: input channels (3: RGB); pretrained weights adapt with ``tl_jax.models.channels``.
    The port defines ``stage_names`` and its own fields (keyword-only here, so theirs may lack defaults).
    """
    num_classes: int | None = 1000
    frozen_stages: tuple[str, ...] = ()
    bn_axis_name: str | None = None
    fold_frozen_bn: bool = True
    input_stage: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    in_channels: int = 3

    @nn.nowrap
    def for_training(self, frozen_stages: Sequence[str], bn_axis_name: str | None) -> Any:
        """What the training loop runs: ``frozen_stages`` frozen, trainable BatchNorm averaged over ``bn_axis_name``."""
        unknown = [s for s in frozen_stages if s not in self.stage_names]
        if unknown:
            raise ValueError(f"no stage {unknown[0]!r} in {tuple(self.stage_names)}")
        return self.clone(frozen_stages=tuple(s for s in self.stage_names if s in frozen_stages),
                          bn_axis_name=bn_axis_name)

    @nn.nowrap
    def stage_mode(self, name: str, train: bool) -> StageMode:
        frozen = name in self.frozen_stages
        running = frozen or not train
        return StageMode(frozen, running, running and self.fold_frozen_bn, running)


Stage = Callable[[jax.Array, StageMode], jax.Array]


def _index(names: Sequence[str], name: str | None, what: str, default: int) -> int:
    if name is None:
        return default
    if name not in names:
        raise ValueError(f"{what}={name!r} is not a stage of {tuple(names)}")
    return list(names).index(name)


def run(model: Any, x: jax.Array, train: bool, backbone: Sequence[tuple[str, Stage]],
        pool: Callable[[jax.Array], jax.Array], head: Callable[[jax.Array, StageMode], jax.Array], *,
        stop_at: str | None = None, return_features: bool = False, return_stages: bool = False) -> Any:
    """Run ``model``'s stages (see the module docstring); ``pool`` makes the head's input (float32)."""
    names = [name for name, _ in backbone] + [HEAD]
    start = _index(names, model.input_stage, "input_stage", 0)
    stop = _index(names, stop_at, "stop_at", len(names))
    if stop < start:
        raise ValueError(f"stop_at={stop_at!r} comes before input_stage={model.input_stage!r}")
    # The leading frozen run: the gradient stops at each of its outputs (nothing below trains).
    leading = next((i for i, n in enumerate(names) if n not in model.frozen_stages), len(names))
    stages = collections.OrderedDict()
    for i, (name, fn) in enumerate(backbone):
        if i < start:
            continue
        if i == stop:
            return x
        x = fn(x, model.stage_mode(name, train))
        if i < leading:
            x = jax.lax.stop_gradient(x)
        stages[name] = x
    features = x if start == len(backbone) else pool(x)
    if stop == len(backbone) or return_features or model.num_classes is None:
        return stages if return_stages else features
    logits = head(features, model.stage_mode(HEAD, train))
    return collections.OrderedDict(stages, head=logits) if return_stages else logits
