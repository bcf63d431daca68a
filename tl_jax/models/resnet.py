"""ResNet ports: torchvision v1.5 and Keras v1, one module with a ``variant`` switch.

The two differ in three places only (see ../shared GUIDE): Keras convs carry a
bias, Keras strides on the first 1x1 conv of a block (torchvision on the 3x3),
and Keras BatchNorm uses eps 1.001e-5. Stages: ``stem, layer1..layer4, head``.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import layers

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
_EPS = {"torchvision": 1e-5, "keras": 1.001e-5}


class _Block(nn.Module):
    """Basic (2 convs) or bottleneck (3 convs, expansion 4) residual block."""
    features: int
    stride: int
    bottleneck: bool
    variant: str
    use_running_average: bool
    bn_axis_name: str | None
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        keras = self.variant == "keras"
        kw = dict(use_bias=keras, dtype=self.dtype, param_dtype=self.param_dtype)
        bn = lambda name: layers.batch_norm(  # noqa: E731
            use_running_average=self.use_running_average, epsilon=_EPS[self.variant],
            axis_name=self.bn_axis_name, name=name, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.bottleneck:
            out_features = self.features * 4
            s1, s2 = (self.stride, 1) if keras else (1, self.stride)
            y = nn.relu(bn("bn1")(layers.conv(self.features, 1, s1, name="conv1", **kw)(x)))
            y = nn.relu(bn("bn2")(layers.conv(self.features, 3, s2, 1, name="conv2", **kw)(y)))
            y = bn("bn3")(layers.conv(out_features, 1, name="conv3", **kw)(y))
        else:
            out_features = self.features
            y = nn.relu(bn("bn1")(layers.conv(self.features, 3, self.stride, 1, name="conv1", **kw)(x)))
            y = bn("bn2")(layers.conv(self.features, 3, 1, 1, name="conv2", **kw)(y))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = bn("downsample_bn")(layers.conv(out_features, 1, self.stride, name="downsample_conv", **kw)(x))
        return nn.relu(y + x)


class _Stage(nn.Module):
    num_blocks: int
    features: int
    stride: int
    bottleneck: bool
    variant: str
    use_running_average: bool
    bn_axis_name: str | None
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_blocks):
            x = _Block(self.features, self.stride if i == 0 else 1, self.bottleneck, self.variant,
                       self.use_running_average, self.bn_axis_name, self.dtype, self.param_dtype,
                       name=f"block{i}")(x)
        return x


class _Stem(nn.Module):
    variant: str
    use_running_average: bool
    bn_axis_name: str | None
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(64, 7, 2, 3, use_bias=self.variant == "keras", name="conv1",
                        dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = layers.batch_norm(use_running_average=self.use_running_average, epsilon=_EPS[self.variant],
                              axis_name=self.bn_axis_name, name="bn1", dtype=self.dtype,
                              param_dtype=self.param_dtype)(x)
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
    """
    stage_sizes: Sequence[int]
    bottleneck: bool
    variant: str = "torchvision"
    num_classes: int | None = 1000
    frozen_depth: int = 0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    stage_names = STAGE_NAMES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        common = dict(variant=self.variant, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                      param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        _, use_ra = layers.stage_flags(0, self.frozen_depth, train)
        x = _Stem(use_running_average=use_ra, name="stem", **common)(x)
        x = layers.freeze_boundary(x, 0, self.frozen_depth)
        for i, (n, feat) in enumerate(zip(self.stage_sizes, (64, 128, 256, 512))):
            _, use_ra = layers.stage_flags(i + 1, self.frozen_depth, train)
            x = _Stage(n, feat, 1 if i == 0 else 2, self.bottleneck, use_running_average=use_ra,
                       name=f"layer{i + 1}", **common)(x)
            x = layers.freeze_boundary(x, i + 1, self.frozen_depth)
        features = layers.global_avg_pool(x).astype(jnp.float32)
        if return_features or self.num_classes is None:
            return features
        return layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(features)


_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def resnet(depth: int, variant: str = "torchvision", **kwargs: Any) -> ResNet:
    sizes, bottleneck = _DEPTHS[depth]
    return ResNet(stage_sizes=sizes, bottleneck=bottleneck, variant=variant, **kwargs)
