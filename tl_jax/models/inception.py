"""Inception-V3 ports: torchvision ``inception_v3`` and Keras ``InceptionV3``, one module.

The two networks have the same layers, kernel sizes and concat orders (Keras'
stride-1 ``'same'`` convolutions all have odd kernels, so they pad symmetrically
like torchvision's explicit padding). They differ in three places:

* Keras BatchNorm has no scale (``scale=False``): its weight files hold no gamma.
* The 3x3 average-pool branches: torchvision's ``avg_pool2d(3, 1, padding=1)``
  counts the zero padding in the mean, Keras' ``'same'`` pooling does not.
* torchvision's published weights expect ``transform_input=True``: the model
  re-normalises an ImageNet-normalised input to the [-1, 1] convention first.
  Keras expects [-1, 1] input directly ("tf" preprocessing).

Module names follow torchvision (``Mixed_5b.branch5x5_1`` -> ``mixed5b/branch5x5_1``)
so the weight maps stay declarative. torchvision's train-time auxiliary classifier
(``AuxLogits``) is not ported: the weight map drops it explicitly.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import layers, staged
from tl_jax.models.layers import ModuleDef
from tl_jax.models.staged import Staged, StageMode
from tl_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD

# The mixed blocks in forward order after the stem: (stage, torchvision block kind, block arguments).
# The Keras weight map derives its conv creation order from this table.
MIXED = (
    ("mixed5b", "A", {"pool_features": 32}),
    ("mixed5c", "A", {"pool_features": 64}),
    ("mixed5d", "A", {"pool_features": 64}),
    ("mixed6a", "B", {}),
    ("mixed6b", "C", {"channels_7x7": 128}),
    ("mixed6c", "C", {"channels_7x7": 160}),
    ("mixed6d", "C", {"channels_7x7": 160}),
    ("mixed6e", "C", {"channels_7x7": 192}),
    ("mixed7a", "D", {}),
    ("mixed7b", "E", {}),
    ("mixed7c", "E", {}),
)
STAGE_NAMES = ("stem", *(stage for stage, _, _ in MIXED), "head")
VARIANTS = ("torchvision", "keras")
_EPS = 1e-3  # both sources
_DROPOUT = {"torchvision": 0.5, "keras": 0.0}


class _BasicConv(nn.Module):
    """conv + BatchNorm + ReLU (torchvision ``BasicConv2d``), submodules ``conv`` and ``bn``."""
    features: int
    kernel: int | tuple[int, int]
    stride: int
    padding: int | tuple[int, int]
    conv: ModuleDef
    norm: ModuleDef
    fold: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = self.conv(self.features, self.kernel, self.stride, self.padding, name="conv")
        return nn.relu(layers.conv_bn(x, conv, self.norm(name="bn"), self.fold))


class _Units(nn.Module):
    """Base of the stem and the blocks: the stage's conv and BatchNorm settings."""
    conv: ModuleDef
    norm: ModuleDef
    fold: bool   # BatchNorm folded into the convolutions (frozen or evaluating)

    def basic(self, name: str, x: jax.Array, features: int, kernel: int | tuple[int, int],
              stride: int = 1, padding: int | tuple[int, int] = 0) -> jax.Array:
        return _BasicConv(features, kernel, stride, padding, self.conv, self.norm, self.fold, name=name)(x)


class _Stem(_Units):
    """Conv2d_1a..Conv2d_4a with both max-pools: 299 -> 35x35x192."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.basic("Conv2d_1a_3x3", x, 32, 3, stride=2)
        x = self.basic("Conv2d_2a_3x3", x, 32, 3)
        x = self.basic("Conv2d_2b_3x3", x, 64, 3, padding=1)
        x = layers.max_pool(x, 3, 2)
        x = self.basic("Conv2d_3b_1x1", x, 80, 1)
        x = self.basic("Conv2d_4a_3x3", x, 192, 3)
        return layers.max_pool(x, 3, 2)


class _Block(_Units):
    """Base of the mixed blocks."""
    count_include_pad: bool  # 3x3 average-pool branches: torch counts the padding, Keras 'same' does not

    def pool_branch(self, x: jax.Array) -> jax.Array:
        return layers.avg_pool(x, 3, 1, 1, count_include_pad=self.count_include_pad)


class _InceptionA(_Block):
    """35x35 block (Mixed_5b..5d, Keras mixed0..2)."""
    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.basic("branch1x1", x, 64, 1)
        b5 = self.basic("branch5x5_1", x, 48, 1)
        b5 = self.basic("branch5x5_2", b5, 64, 5, padding=2)
        b3 = self.basic("branch3x3dbl_1", x, 64, 1)
        b3 = self.basic("branch3x3dbl_2", b3, 96, 3, padding=1)
        b3 = self.basic("branch3x3dbl_3", b3, 96, 3, padding=1)
        bp = self.basic("branch_pool", self.pool_branch(x), self.pool_features, 1)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(_Block):
    """Grid reduction 35 -> 17 (Mixed_6a, Keras mixed3)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.basic("branch3x3", x, 384, 3, stride=2)
        bd = self.basic("branch3x3dbl_1", x, 64, 1)
        bd = self.basic("branch3x3dbl_2", bd, 96, 3, padding=1)
        bd = self.basic("branch3x3dbl_3", bd, 96, 3, stride=2)
        return jnp.concatenate([b3, bd, layers.max_pool(x, 3, 2)], axis=-1)


class _InceptionC(_Block):
    """17x17 block with factorised 7x7 convs (Mixed_6b..6e, Keras mixed4..7)."""
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.basic("branch1x1", x, 192, 1)
        b7 = self.basic("branch7x7_1", x, c7, 1)
        b7 = self.basic("branch7x7_2", b7, c7, (1, 7), padding=(0, 3))
        b7 = self.basic("branch7x7_3", b7, 192, (7, 1), padding=(3, 0))
        bd = self.basic("branch7x7dbl_1", x, c7, 1)
        bd = self.basic("branch7x7dbl_2", bd, c7, (7, 1), padding=(3, 0))
        bd = self.basic("branch7x7dbl_3", bd, c7, (1, 7), padding=(0, 3))
        bd = self.basic("branch7x7dbl_4", bd, c7, (7, 1), padding=(3, 0))
        bd = self.basic("branch7x7dbl_5", bd, 192, (1, 7), padding=(0, 3))
        bp = self.basic("branch_pool", self.pool_branch(x), 192, 1)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(_Block):
    """Grid reduction 17 -> 8 (Mixed_7a, Keras mixed8)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.basic("branch3x3_1", x, 192, 1)
        b3 = self.basic("branch3x3_2", b3, 320, 3, stride=2)
        b7 = self.basic("branch7x7x3_1", x, 192, 1)
        b7 = self.basic("branch7x7x3_2", b7, 192, (1, 7), padding=(0, 3))
        b7 = self.basic("branch7x7x3_3", b7, 192, (7, 1), padding=(3, 0))
        b7 = self.basic("branch7x7x3_4", b7, 192, 3, stride=2)
        return jnp.concatenate([b3, b7, layers.max_pool(x, 3, 2)], axis=-1)


class _InceptionE(_Block):
    """8x8 block with split 1x3 / 3x1 branches (Mixed_7b, 7c, Keras mixed9, 10)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.basic("branch1x1", x, 320, 1)
        b3 = self.basic("branch3x3_1", x, 384, 1)
        b3 = jnp.concatenate([self.basic("branch3x3_2a", b3, 384, (1, 3), padding=(0, 1)),
                              self.basic("branch3x3_2b", b3, 384, (3, 1), padding=(1, 0))], axis=-1)
        bd = self.basic("branch3x3dbl_1", x, 448, 1)
        bd = self.basic("branch3x3dbl_2", bd, 384, 3, padding=1)
        bd = jnp.concatenate([self.basic("branch3x3dbl_3a", bd, 384, (1, 3), padding=(0, 1)),
                              self.basic("branch3x3dbl_3b", bd, 384, (3, 1), padding=(1, 0))], axis=-1)
        bp = self.basic("branch_pool", self.pool_branch(x), 192, 1)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# torchvision's block classes InceptionA..E, keyed by the kinds in MIXED.
BLOCKS = {"A": _InceptionA, "B": _InceptionB, "C": _InceptionC, "D": _InceptionD, "E": _InceptionE}


class InceptionV3(Staged):
    """Inception-V3 on NHWC preprocessed input (299x299; at least 75x75).

    Attributes (with those of :class:`~tl_jax.models.staged.Staged`: num_classes, frozen_stages, ...):
      variant: ``"torchvision"`` or ``"keras"``.
      dropout_rate: dropout before the head in training; ``None`` = the source's
        (torchvision 0.5, Keras 0.0: Keras InceptionV3 has no dropout).
      transform_input: torchvision only: re-normalise an ImageNet-normalised input
        to [-1, 1] inside the model, as the published torchvision weights expect.
        Ignored by the Keras variant (use :func:`inception_v3`, which refuses it).
    """
    variant: str = "torchvision"
    dropout_rate: float | None = None
    transform_input: bool = True

    stage_names = STAGE_NAMES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, *, stop_at: str | None = None,
                 return_features: bool = False, return_stages: bool = False) -> Any:
        """Logits, or what ``stop_at`` / ``return_features`` / ``return_stages`` ask for (``tl_jax.models.staged``)."""
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown Inception-V3 variant {self.variant!r}; choose one of {VARIANTS}")
        conv = functools.partial(layers.conv, dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(mode: StageMode) -> ModuleDef:
            return functools.partial(layers.batch_norm, use_running_average=mode.running_average, epsilon=_EPS,
                                     use_scale=self.variant == "torchvision", axis_name=self.bn_axis_name,
                                     dtype=self.dtype, param_dtype=self.param_dtype)

        def stem(x: jax.Array, mode: StageMode) -> jax.Array:
            layers.check_channels(x, self.in_channels)
            if self.variant == "torchvision" and self.transform_input:
                if self.in_channels != 3:
                    raise ValueError(f"transform_input re-normalises RGB input; with in_channels={self.in_channels} "
                                     "pass transform_input=False and normalise each channel yourself")
                # torchvision ``Inception3._transform_input``: x_imagenet * std / 0.5 + (mean - 0.5) / 0.5.
                scale = jnp.asarray([s / 0.5 for s in IMAGENET_STD], x.dtype)
                shift = jnp.asarray([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], x.dtype)
                x = x * scale + shift
            return _Stem(conv, norm(mode), mode.fold, name="stem")(x.astype(self.dtype))

        def mixed(stage: str, kind: str, kwargs: dict[str, Any]):
            def apply(x: jax.Array, mode: StageMode) -> jax.Array:
                return BLOCKS[kind](conv, norm(mode), mode.fold, count_include_pad=self.variant == "torchvision",
                                    name=stage, **kwargs)(x.astype(self.dtype))
            return apply

        def head(features: jax.Array, mode: StageMode) -> jax.Array:
            rate = _DROPOUT[self.variant] if self.dropout_rate is None else self.dropout_rate
            if rate > 0:
                features = nn.Dropout(rate, deterministic=mode.deterministic, name="dropout")(features)
            return layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(features)

        backbone = [("stem", stem)] + [(stage, mixed(stage, kind, kwargs)) for stage, kind, kwargs in MIXED]
        return staged.run(self, x, train, backbone, lambda y: layers.global_avg_pool(y).astype(jnp.float32), head,
                          stop_at=stop_at, return_features=return_features, return_stages=return_stages)


def inception_v3(variant: str = "torchvision", **kwargs: Any) -> InceptionV3:
    """The registry's constructor. The Keras variant has no ``transform_input`` step."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Inception-V3 variant {variant!r}; choose one of {VARIANTS}")
    if variant == "keras":
        if kwargs.get("transform_input"):
            raise ValueError("transform_input is a torchvision Inception-V3 step; Keras InceptionV3 "
                             "expects [-1, 1] input ('tf' preprocessing)")
        kwargs["transform_input"] = False
    kwargs.setdefault("dropout_rate", _DROPOUT[variant])
    return InceptionV3(variant=variant, **kwargs)
