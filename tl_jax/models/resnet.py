"""ResNet ports: torchvision v1.5 and Keras v1, one module with a ``variant`` switch.

The two differ in three places only: Keras convs carry a bias, Keras strides on
the first 1x1 conv of a bottleneck block (torchvision v1.5 on the 3x3), and Keras
BatchNorm eps is 1.001e-5 (torchvision 1e-5). Stages: ``stem, layer1..layer4, head``.
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
    fold: bool           # BatchNorm folded into the convolutions (frozen or evaluating)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv, norm, f = self.conv, self.norm, self.features

        def unit(y, i, features, kernel, stride=1, padding=0):
            return layers.conv_bn(y, conv(features, kernel, stride, padding, name=f"conv{i}"), norm(name=f"bn{i}"),
                                  self.fold)
        if self.bottleneck:
            out_features = f * 4
            s1, s2 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
            y = nn.relu(unit(x, 1, f, 1, s1))
            y = nn.relu(unit(y, 2, f, 3, s2, 1))
            y = unit(y, 3, out_features, 1)
        else:
            out_features = f
            y = nn.relu(unit(x, 1, f, 3, self.stride, 1))
            y = unit(y, 2, f, 3, 1, 1)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = layers.conv_bn(x, conv(out_features, 1, self.stride, name="downsample_conv"),
                               norm(name="downsample_bn"), self.fold)
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
    fold: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv_bn(x, self.conv(64, 7, 2, 3, name="conv1"), self.norm(name="bn1"), self.fold)
        # After ReLU all values are >= 0, so Keras' zero padding equals torch's -inf padding.
        return layers.max_pool(nn.relu(x), 3, 2, 1)


class ResNet(Staged):
    """ResNet on NHWC preprocessed input.

    Attributes (with those of :class:`~tl_jax.models.staged.Staged`: num_classes, frozen_stages, ...):
      stage_sizes: blocks per stage (``layer1..layer4``).
      bottleneck: bottleneck blocks (ResNet-50/101/152) or basic blocks (18/34).
      variant: ``"torchvision"`` (v1.5) or ``"keras"`` (v1).
    """
    stage_sizes: Sequence[int]
    bottleneck: bool
    variant: str = "torchvision"

    stage_names = STAGE_NAMES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, *, stop_at: str | None = None,
                 return_features: bool = False, return_stages: bool = False) -> Any:
        """Logits, or what ``stop_at`` / ``return_features`` / ``return_stages`` ask for (``tl_jax.models.staged``)."""
        keras = self.variant == "keras"
        conv = functools.partial(layers.conv, use_bias=keras, dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(mode: StageMode) -> ModuleDef:
            return functools.partial(layers.batch_norm, use_running_average=mode.running_average,
                                     epsilon=_EPS[self.variant], axis_name=self.bn_axis_name, dtype=self.dtype,
                                     param_dtype=self.param_dtype)

        def stem(x: jax.Array, mode: StageMode) -> jax.Array:
            layers.check_channels(x, self.in_channels)
            return _Stem(conv, norm(mode), mode.fold, name="stem")(x.astype(self.dtype))

        def layer(i: int, num_blocks: int, features: int):
            def apply(x: jax.Array, mode: StageMode) -> jax.Array:
                block = functools.partial(_Block, bottleneck=self.bottleneck, stride_on_1x1=keras, conv=conv,
                                          norm=norm(mode), fold=mode.fold)
                return _Stage(block, num_blocks, features, 1 if i == 1 else 2, name=f"layer{i}")(x.astype(self.dtype))
            return apply

        backbone = [("stem", stem)] + [(f"layer{i}", layer(i, n, feat)) for i, (n, feat)
                                       in enumerate(zip(self.stage_sizes, (64, 128, 256, 512)), start=1)]
        head = lambda f, mode: layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(f)  # noqa: E731
        return staged.run(self, x, train, backbone, lambda y: layers.global_avg_pool(y).astype(jnp.float32), head,
                          stop_at=stop_at, return_features=return_features, return_stages=return_stages)


CONFIGS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def resnet(depth: int, variant: str = "torchvision", **kwargs: Any) -> ResNet:
    sizes, bottleneck = CONFIGS[depth]
    return ResNet(stage_sizes=sizes, bottleneck=bottleneck, variant=variant, **kwargs)
