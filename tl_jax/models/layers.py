"""Building blocks shared by every port.

Why these exist: exact parity with torchvision / Keras depends on details that
Flax defaults get wrong for us (``'SAME'`` pads asymmetrically at stride 2,
max-pool must pad with -inf, torch average pooling counts the padding, Keras'
does not). Every model builds its layers through these helpers so that the
details are decided once: a model binds its settings into ``functools.partial``
of :func:`conv` and :func:`batch_norm` and hands those to its blocks, as Flax's
``examples/imagenet`` does.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Any  # a partial that builds a submodule, e.g. functools.partial(conv, dtype=...)


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def conv(features: int, kernel: int | Sequence[int], stride: int = 1, padding: int | Sequence[int] = 0, *,
         use_bias: bool = False, name: str | None = None, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> nn.Conv:
    """A convolution with explicit symmetric padding (torch semantics)."""
    ph, pw = pair(padding)
    return nn.Conv(features, pair(kernel), strides=pair(stride), padding=((ph, ph), (pw, pw)),
                   use_bias=use_bias, name=name, dtype=dtype, param_dtype=param_dtype)


def batch_norm(*, use_running_average: bool, epsilon: float, use_scale: bool = True,
               axis_name: str | None = None, name: str | None = None, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """BatchNorm with torch's default momentum (0.1 in torch == 0.9 in Flax).

    Statistics are always kept in float32 (``param_dtype``) even under bf16 compute.
    ``axis_name`` averages batch statistics across the data-parallel axis in training.
    """
    return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=epsilon,
                        use_scale=use_scale, axis_name=None if use_running_average else axis_name,
                        name=name, dtype=dtype, param_dtype=param_dtype)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling padded with -inf, as torch ``MaxPool2d`` (and Keras 'valid')."""
    return nn.max_pool(x, pair(kernel), pair(stride), padding=((padding, padding), (padding, padding)))


def avg_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0, *,
             count_include_pad: bool = True) -> jax.Array:
    """Average pooling. torch counts zero padding in the mean; Keras 'same' does not."""
    return nn.avg_pool(x, pair(kernel), pair(stride), padding=((padding, padding), (padding, padding)),
                       count_include_pad=count_include_pad)


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """torch ``AdaptiveAvgPool2d`` on NHWC: bin i spans [floor(i*H/o), ceil((i+1)*H/o))."""
    oh, ow = pair(output_size)
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return nn.avg_pool(x, (h // oh, w // ow), (h // oh, w // ow))

    def bins(n: int, o: int) -> list[tuple[int, int]]:
        return [((i * n) // o, -((-(i + 1) * n) // o)) for i in range(o)]

    rows = [jnp.stack([x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)) for c0, c1 in bins(w, ow)], axis=1)
            for r0, r1 in bins(h, oh)]
    return jnp.stack(rows, axis=1)


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


def stage_flags(index: int, frozen_depth: int, train: bool) -> tuple[bool, bool]:
    """(frozen, use_running_average) for the stage at ``index`` in forward order.

    A frozen stage always runs BatchNorm on its running averages, so its statistics
    never move, and never applies dropout.
    """
    frozen = index < frozen_depth
    return frozen, frozen or not train


def freeze_boundary(x: jax.Array, index: int, frozen_depth: int) -> jax.Array:
    """Stop gradients at the output of every frozen stage.

    XLA would also drop the dead backward of the frozen prefix once the optimizer
    zeroes those gradients; cutting it here makes that independent of the optimizer.
    Cutting every frozen stage, not only the last, keeps a loss on the outputs of
    ``return_stages`` from reaching frozen parameters too.
    """
    return jax.lax.stop_gradient(x) if index < frozen_depth else x


def check_channels(x: jax.Array, in_channels: int) -> None:
    """A clear error for an input with another channel count than the model was built for."""
    if x.shape[-1] != in_channels:
        raise ValueError(f"the model takes NHWC input with {in_channels} channels, got shape {tuple(x.shape)}; "
                         f"build it with in_channels={x.shape[-1]} (tl_jax.create / load_pretrained)")


def classifier(num_classes: int, *, name: str = "fc", param_dtype: Dtype = jnp.float32) -> nn.Dense:
    """Final classifier, computed in float32 so logits and loss stay in float32."""
    return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=param_dtype, name=name)

