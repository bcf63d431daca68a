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
                   use_bias=use_bias, name=name, dtype=dtype, param_dtype=param_dtype,
                   conv_general_dilated=conv_general_dilated)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
    """``lax.conv_general_dilated``, computed as the matrix product it is when one tap meets the input.

    Why: on a 1x1 feature map (ResNet's last stages at 8-32 px inputs) a padded kxk convolution reads a
    single tap of its kernel (the rest multiplies padding), yet XLA:CPU computes the whole window and its
    gradient: 50x the time of the equivalent product on the 2-core machine. The kernel keeps its shape,
    so parameters, checkpoints and gradients (zero for the unread taps, as before) are unchanged.
    Layouts are Flax's NHWC / HWIO; every other case goes to ``lax.conv_general_dilated``.
    """
    tap = _single_tap(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding, lhs_dilation, rhs_dilation)
    if tap is None or feature_group_count != 1 or not _channels_last(dimension_numbers, lhs.ndim):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision,
                                            preferred_element_type=preferred_element_type)
    rows = lhs.reshape(lhs.shape[0], lhs.shape[-1])
    # Accumulate in float32 as a convolution does, whatever the compute dtype.
    y = jnp.dot(rows, rhs[tap], precision=precision,
                preferred_element_type=preferred_element_type or jnp.promote_types(lhs.dtype, jnp.float32))
    return y.astype(preferred_element_type or lhs.dtype).reshape(lhs.shape[:-1] + (rhs.shape[-1],))


def _channels_last(numbers, ndim: int) -> bool:
    if numbers is None or isinstance(numbers, tuple) and isinstance(numbers[0], str):
        return numbers is not None and numbers[0].endswith("C") and numbers[0].startswith("N")
    spatial = tuple(range(1, ndim - 1))
    return (tuple(numbers.lhs_spec) == (0, ndim - 1, *spatial) == tuple(numbers.out_spec)
            and tuple(numbers.rhs_spec) == (ndim - 1, ndim - 2, *range(ndim - 2)))


def _single_tap(spatial, kernel, strides, padding, lhs_dilation, rhs_dilation) -> tuple[int, ...] | None:
    """The kernel index that alone meets a 1x1 input giving a 1x1 output, else None."""
    if isinstance(padding, str) or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        return None
    tap = []
    for size, k, s, (lo, hi) in zip(spatial, kernel, strides, padding):
        if size != 1 or not 0 <= lo < k or (1 + lo + hi - k) // s + 1 != 1:
            return None
        tap.append(lo)
    return tuple(tap)


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


def conv_bn(x: jax.Array, conv: nn.Conv, norm: nn.BatchNorm | None, fold: bool) -> jax.Array:
    """``norm(conv(x))``; with ``fold`` and BatchNorm on running averages, one convolution instead.

    Inference-mode BatchNorm is an affine map per output channel, so
    ``gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta == conv(x, W * s) + (b - mean) * s + beta``
    with ``s = gamma / sqrt(var + eps)``. The folded kernel and bias are derived here, inside the jitted
    function, from the float32 parameters and statistics (the stored variables never change) and cast to
    the compute dtype by the convolution, which then lowers to one fused convolution + bias (+ ReLU) call
    on GPUs instead of a convolution followed by a separate pass over the activations.
    """
    if norm is None:
        return conv(x)
    if not (fold and norm.use_running_average) or conv.is_initializing():
        return norm(conv(x))
    weights, bn = conv.variables["params"], norm.variables
    gamma = bn["params"]["scale"] if norm.use_scale else 1.0
    s = gamma * jax.lax.rsqrt(bn["batch_stats"]["var"] + norm.epsilon)
    bias = (weights["bias"] if conv.use_bias else 0.0) - bn["batch_stats"]["mean"]
    folded = {"kernel": weights["kernel"] * s, "bias": bias * s + (bn["params"]["bias"] if norm.use_bias else 0.0)}
    return conv.clone(parent=None, name=None, use_bias=True).apply({"params": folded}, x)


def check_channels(x: jax.Array, in_channels: int) -> None:
    """A clear error for an input with another channel count than the model was built for."""
    if x.shape[-1] != in_channels:
        raise ValueError(f"the model takes NHWC input with {in_channels} channels, got shape {tuple(x.shape)}; "
                         f"build it with in_channels={x.shape[-1]} (tl_jax.create / load_pretrained)")


def classifier(num_classes: int, *, name: str = "fc", param_dtype: Dtype = jnp.float32) -> nn.Dense:
    """Final classifier, computed in float32 so logits and loss stay in float32."""
    return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=param_dtype, name=name)

