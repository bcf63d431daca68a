"""VGG ports: torchvision vgg11/13/16/19 (with and without BatchNorm) and Keras VGG16/19.

The variants differ only before the classifier: torchvision average-pools
adaptively to 7x7 (identity at 224) and its checkpoints flatten (C, H, W), which
the weight map fixes once by permuting fc6; Keras flattens NHWC directly and so
only runs at the input size its fc6 was built for. torchvision's ``*_bn`` puts
a BatchNorm (eps 1e-5) between every conv and its ReLU.

Stages: ``block1..block5`` (convs, each ending with its 2x2 max-pool),
``classifier`` (fc6, fc7) and ``head`` (fc8). ``include_classifier=False`` is the convolutional
backbone that Keras' ``include_top=False`` files hold: no fc6/fc7; the features (and the
input of a head) are block5's output averaged over space (Keras ``pooling="avg"``).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import layers, staged
from tl_jax.models.layers import ModuleDef
from tl_jax.models.staged import Staged, StageMode

STAGE_NAMES = ("block1", "block2", "block3", "block4", "block5", "classifier", "head")
CONV_STAGE_NAMES = STAGE_NAMES[:5] + ("head",)   # include_classifier=False
BLOCK_FEATURES = (64, 128, 256, 512, 512)
# Convolutions per block: torchvision configurations "A", "B", "D", "E" (Keras VGG16/19 are D/E).
BLOCK_CONVS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
# torchvision trains fc6/fc7 with dropout 0.5; keras.applications VGG has no dropout layer.
DEFAULT_DROPOUT = {"torchvision": 0.5, "keras": 0.0}
_BN_EPS = 1e-5


class _Block(nn.Module):
    """``num_convs`` x (3x3 conv [+ BatchNorm] + ReLU), then a 2x2 max-pool."""
    num_convs: int
    features: int
    conv: ModuleDef
    norm: ModuleDef | None  # None: plain VGG, no BatchNorm
    fold: bool              # BatchNorm folded into the convolutions (frozen or evaluating)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(1, self.num_convs + 1):
            norm = self.norm(name=f"bn{i}") if self.norm is not None else None
            x = nn.relu(layers.conv_bn(x, self.conv(self.features, 3, 1, 1, name=f"conv{i}"), norm, self.fold))
        return layers.max_pool(x, 2, 2)


class _Classifier(nn.Module):
    """[adaptive 7x7 average pool,] flatten NHWC, fc6 + ReLU + dropout, fc7 + ReLU.

    The dropout after fc7 belongs to this stage too but is applied on the way to the head, so the
    returned features are the fc7 activations.
    """
    adaptive_pool: bool  # torchvision only; Keras' fc6 fixes the input size instead
    dense: ModuleDef
    dropout: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.adaptive_pool:
            x = layers.adaptive_avg_pool(x, 7)
        x = nn.relu(self.dense(4096, name="fc6")(x.reshape(x.shape[0], -1)))
        return nn.relu(self.dense(4096, name="fc7")(self.dropout()(x)))


class VGG(Staged):
    """VGG on NHWC preprocessed input.

    Attributes (with those of :class:`~tl_jax.models.staged.Staged`: num_classes, frozen_stages, ...):
      block_convs: convolutions in each of the five blocks.
      batch_norm: BatchNorm after every conv (torchvision ``vgg*_bn``).
      variant: ``"torchvision"`` (adaptive 7x7 pool before fc6) or ``"keras"``.
      dropout_rate: dropout after fc6 and fc7 in training while ``classifier``
        is not frozen; ``None`` takes the source's own (torchvision 0.5, Keras 0).
      include_classifier: ``False``: no fc6/fc7 (Keras ``include_top=False`` weights); the
        features are block5 average-pooled, and the stages are :data:`CONV_STAGE_NAMES`.
    """
    block_convs: Sequence[int]
    batch_norm: bool = False
    variant: str = "torchvision"
    dropout_rate: float | None = None
    include_classifier: bool = True

    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGE_NAMES if self.include_classifier else CONV_STAGE_NAMES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, *, stop_at: str | None = None,
                 return_features: bool = False, return_stages: bool = False) -> Any:
        """Logits, or what ``stop_at`` / ``return_features`` / ``return_stages`` ask for (``tl_jax.models.staged``)."""
        if self.variant not in DEFAULT_DROPOUT:
            raise ValueError(f"unknown VGG variant {self.variant!r}; choose one of {tuple(DEFAULT_DROPOUT)}")
        conv = functools.partial(layers.conv, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        rate = DEFAULT_DROPOUT[self.variant] if self.dropout_rate is None else self.dropout_rate
        # fc6's and fc7's dropout belongs to the classifier stage: off where that stage is frozen.
        classifier_mode = self.stage_mode("classifier", train)
        dropout = functools.partial(nn.Dropout, rate if self.include_classifier else 0.0,
                                    deterministic=classifier_mode.deterministic)

        def block(i: int, num_convs: int, features: int):
            def apply(x: jax.Array, mode: StageMode) -> jax.Array:
                if i == 1:
                    layers.check_channels(x, self.in_channels)
                norm = functools.partial(layers.batch_norm, use_running_average=mode.running_average,
                                         epsilon=_BN_EPS, axis_name=self.bn_axis_name, dtype=self.dtype,
                                         param_dtype=self.param_dtype) if self.batch_norm else None
                return _Block(num_convs, features, conv, norm, mode.fold, name=f"block{i}")(x.astype(self.dtype))
            return apply

        def classifier(x: jax.Array, mode: StageMode) -> jax.Array:
            dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
            return _Classifier(self.variant == "torchvision", dense, dropout, name="classifier")(x.astype(self.dtype))

        def head(features: jax.Array, mode: StageMode) -> jax.Array:
            return layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(dropout()(features))

        backbone = [(f"block{i}", block(i, n, f)) for i, (n, f) in enumerate(zip(self.block_convs, BLOCK_FEATURES), 1)]
        if self.include_classifier:
            backbone.append(("classifier", classifier))
            pool = lambda y: y.astype(jnp.float32)  # noqa: E731  (fc7's activations are the features)
        else:
            pool = lambda y: jnp.mean(y.astype(jnp.float32), axis=(1, 2))  # noqa: E731
        return staged.run(self, x, train, backbone, pool, head, stop_at=stop_at, return_features=return_features,
                          return_stages=return_stages)


def vgg(depth: int, batch_norm: bool = False, variant: str = "torchvision", **kwargs: Any) -> VGG:
    if depth not in BLOCK_CONVS:
        raise ValueError(f"no VGG of depth {depth}; choose one of {sorted(BLOCK_CONVS)}")
    return VGG(block_convs=BLOCK_CONVS[depth], batch_norm=batch_norm, variant=variant, **kwargs)
