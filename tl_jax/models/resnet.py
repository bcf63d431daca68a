"""ResNet ports: torchvision v1.5 and Keras v1, one module with a ``variant`` switch.

The two differ in three places only: Keras convs carry a bias, Keras strides on
the first 1x1 conv of a bottleneck block (torchvision v1.5 on the 3x3), and Keras
BatchNorm eps is 1.001e-5 (torchvision 1e-5). Stages: ``stem, layer1..layer4, head``.
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

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
_EPS = {"torchvision": 1e-5, "keras": 1.001e-5}


class _Block(nn.Module):
    """Basic (2 convs) or bottleneck (3 convs, expansion 4) residual block."""
    features: int
    stride: int
    bottleneck: bool
    stride_on_1x1: bool  # Keras v1 strides on the first 1x1 conv, torchvision v1.5 on the 3x3
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv, norm, f = self.conv, self.norm, self.features
        if self.bottleneck:
            out_features = f * 4
            s1, s2 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
            y = nn.relu(norm(name="bn1")(conv(f, 1, s1, name="conv1")(x)))
            y = nn.relu(norm(name="bn2")(conv(f, 3, s2, 1, name="conv2")(y)))
            y = norm(name="bn3")(conv(out_features, 1, name="conv3")(y))
        else:
            out_features = f
            y = nn.relu(norm(name="bn1")(conv(f, 3, self.stride, 1, name="conv1")(x)))
            y = norm(name="bn2")(conv(f, 3, 1, 1, name="conv2")(y))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = norm(name="downsample_bn")(conv(out_features, 1, self.stride, name="downsample_conv")(x))
        return nn.relu(y + x)


class _Stage(nn.Module):
    """``num_blocks`` blocks named ``block0..``; only the first one strides."""
    block: ModuleDef
    num_blocks: int
    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_blocks):
            x = self.block(self.features, self.stride if i == 0 else 1, name=f"block{i}")(x)
        return x


class _Stem(nn.Module):
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(name="bn1")(self.conv(64, 7, 2, 3, name="conv1")(x))
        # After ReLU all values are >= 0, so Keras' zero padding equals torch's -inf padding.
        return layers.max_pool(nn.relu(x), 3, 2, 1)


class ResNet(nn.Module):
    """ResNet on NHWC preprocessed input.

    Attributes:
      stage_sizes: blocks per stage (``layer1..layer4``).
      bottleneck: bottleneck blocks (ResNet-50/101/152) or basic blocks (18/34).
      variant: ``"torchvision"`` (v1.5) or ``"keras"`` (v1).
      num_classes: logits of the head; ``None`` builds no head (features only).
      frozen_depth: the first ``frozen_depth`` stages run BatchNorm on running
        averages and the gradient stops at their output.
      bn_axis_name: mesh axis over which trainable BatchNorm averages batch statistics.
      in_channels: input channels (3: RGB); pretrained weights adapt with ``tl_jax.models.channels``.
    """
    stage_sizes: Sequence[int]
    bottleneck: bool
    variant: str = "torchvision"
    num_classes: int | None = 1000
    frozen_depth: int = 0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    in_channels: int = 3

    stage_names = STAGE_NAMES

    @nn.nowrap
    def for_training(self, frozen_depth: int, bn_axis_name: str | None) -> ResNet:
        """What the training loop runs: ``frozen_depth`` stages frozen, BatchNorm averaged over ``bn_axis_name``."""
        return self.clone(frozen_depth=frozen_depth, bn_axis_name=bn_axis_name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False,
                 return_stages: bool = False) -> Any:
        """Logits; pooled features with ``return_features`` (no head); with ``return_stages`` an
        OrderedDict (its order survives ``jax.jit``) of every stage's output, ``"head"`` = logits."""
        layers.check_channels(x, self.in_channels)
        keras = self.variant == "keras"
        conv = functools.partial(layers.conv, use_bias=keras, dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(stage: int) -> ModuleDef:
            _, use_running_average = layers.stage_flags(stage, self.frozen_depth, train)
            return functools.partial(layers.batch_norm, use_running_average=use_running_average,
                                     epsilon=_EPS[self.variant], axis_name=self.bn_axis_name, dtype=self.dtype,
                                     param_dtype=self.param_dtype)

        stages = collections.OrderedDict()
        x = _Stem(conv, norm(0), name="stem")(x.astype(self.dtype))
        x = stages["stem"] = layers.freeze_boundary(x, 0, self.frozen_depth)
        for i, (n, feat) in enumerate(zip(self.stage_sizes, (64, 128, 256, 512)), start=1):
            block = functools.partial(_Block, bottleneck=self.bottleneck, stride_on_1x1=keras, conv=conv,
                                      norm=norm(i))
            x = _Stage(block, n, feat, 1 if i == 1 else 2, name=f"layer{i}")(x)
            x = stages[f"layer{i}"] = layers.freeze_boundary(x, i, self.frozen_depth)
        features = layers.global_avg_pool(x).astype(jnp.float32)
        if return_features or self.num_classes is None:
            return stages if return_stages else features
        logits = layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(features)
        return collections.OrderedDict(stages, head=logits) if return_stages else logits


CONFIGS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def resnet(depth: int, variant: str = "torchvision", **kwargs: Any) -> ResNet:
    sizes, bottleneck = CONFIGS[depth]
    return ResNet(stage_sizes=sizes, bottleneck=bottleneck, variant=variant, **kwargs)
