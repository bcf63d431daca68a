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

import collections
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import layers
from tl_jax.models.layers import ModuleDef

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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(1, self.num_convs + 1):
            x = self.conv(self.features, 3, 1, 1, name=f"conv{i}")(x)
            if self.norm is not None:
                x = self.norm(name=f"bn{i}")(x)
            x = nn.relu(x)
        return layers.max_pool(x, 2, 2)


class _Classifier(nn.Module):
    """[adaptive 7x7 average pool,] flatten NHWC, fc6 + ReLU + dropout, fc7 + ReLU.

    The dropout after fc7 belongs to this stage too but is applied by the caller
    on the way to the head, so the returned features are the fc7 activations.
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


class VGG(nn.Module):
    """VGG on NHWC preprocessed input.

    Attributes:
      block_convs: convolutions in each of the five blocks.
      batch_norm: BatchNorm after every conv (torchvision ``vgg*_bn``).
      variant: ``"torchvision"`` (adaptive 7x7 pool before fc6) or ``"keras"``.
      dropout_rate: dropout after fc6 and fc7 in training while ``classifier``
        is not frozen; ``None`` takes the source's own (torchvision 0.5, Keras 0).
      num_classes: logits of the head; ``None`` builds no head (features only).
      include_classifier: ``False``: no fc6/fc7 (Keras ``include_top=False`` weights); the
        features are block5 average-pooled, and the stages are :data:`CONV_STAGE_NAMES`.
      frozen_depth: the first ``frozen_depth`` stages run BatchNorm on running
        averages, apply no dropout, and the gradient stops at their output.
      bn_axis_name: mesh axis over which trainable BatchNorm averages batch statistics.
      in_channels: input channels (3: RGB); pretrained weights adapt with ``tl_jax.models.channels``.
    """
    block_convs: Sequence[int]
    batch_norm: bool = False
    variant: str = "torchvision"
    dropout_rate: float | None = None
    num_classes: int | None = 1000
    include_classifier: bool = True
    frozen_depth: int = 0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    in_channels: int = 3

    @property
    def stage_names(self) -> tuple[str, ...]:
        return STAGE_NAMES if self.include_classifier else CONV_STAGE_NAMES

    @nn.nowrap
    def for_training(self, frozen_depth: int, bn_axis_name: str | None) -> VGG:
        """What the training loop runs: ``frozen_depth`` stages frozen, BatchNorm averaged over ``bn_axis_name``."""
        return self.clone(frozen_depth=frozen_depth, bn_axis_name=bn_axis_name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False,
                 return_stages: bool = False) -> Any:
        """Logits; fc7 features with ``return_features`` (no head); with ``return_stages`` an
        OrderedDict (its order survives ``jax.jit``) of every stage's output, ``"head"`` = logits."""
        if self.variant not in DEFAULT_DROPOUT:
            raise ValueError(f"unknown VGG variant {self.variant!r}; choose one of {tuple(DEFAULT_DROPOUT)}")
        layers.check_channels(x, self.in_channels)
        conv = functools.partial(layers.conv, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        stages = collections.OrderedDict()
        x = x.astype(self.dtype)
        for i, (n, feat) in enumerate(zip(self.block_convs, BLOCK_FEATURES)):
            _, use_running_average = layers.stage_flags(i, self.frozen_depth, train)
            norm = functools.partial(layers.batch_norm, use_running_average=use_running_average, epsilon=_BN_EPS,
                                     axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
            x = _Block(n, feat, conv, norm if self.batch_norm else None, name=f"block{i + 1}")(x)
            x = stages[f"block{i + 1}"] = layers.freeze_boundary(x, i, self.frozen_depth)
        frozen, _ = layers.stage_flags(5, self.frozen_depth, train)
        rate = DEFAULT_DROPOUT[self.variant] if self.dropout_rate is None else self.dropout_rate
        dropout = functools.partial(nn.Dropout, rate, deterministic=frozen or not train)
        if self.include_classifier:
            dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
            x = _Classifier(self.variant == "torchvision", dense, dropout, name="classifier")(x)
            x = stages["classifier"] = layers.freeze_boundary(x, 5, self.frozen_depth)
        else:
            x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            dropout = functools.partial(nn.Dropout, 0.0, deterministic=True)
        features = x.astype(jnp.float32)
        if return_features or self.num_classes is None:
            return stages if return_stages else features
        head = layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)
        logits = head(dropout()(features))
        return collections.OrderedDict(stages, head=logits) if return_stages else logits


def vgg(depth: int, batch_norm: bool = False, variant: str = "torchvision", **kwargs: Any) -> VGG:
    if depth not in BLOCK_CONVS:
        raise ValueError(f"no VGG of depth {depth}; choose one of {sorted(BLOCK_CONVS)}")
    return VGG(block_convs=BLOCK_CONVS[depth], batch_norm=batch_norm, variant=variant, **kwargs)
