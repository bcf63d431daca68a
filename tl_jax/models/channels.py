"""Pretrained RGB weights on inputs with another number of channels (grayscale, multispectral, medical).

The first convolution's kernel is adapted the way timm's ``adapt_input_conv`` does, so a model fine-tuned
here behaves like the same model in timm: one channel gets the sum of the three RGB filters (a gray
image then gives exactly what the RGB model gives on that image repeated three times); C channels get
the RGB filters repeated cyclically (R, G, B, R, ...) and scaled by 3 / C, which keeps the first layer's
output at the same scale for inputs of the same statistics. Every other weight is unchanged.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def adapt_input_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """An HWIO kernel with 3 input channels -> one with ``in_channels``, computed in float32."""
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels}: give a positive number of input channels")
    kernel = np.asarray(kernel)
    if kernel.shape[2] != 3:
        raise ValueError(f"the first convolution takes {kernel.shape[2]} channels, not 3: only RGB weights adapt")
    k = kernel.astype(np.float32)
    if in_channels == 1:
        out = k.sum(axis=2, keepdims=True)
    elif in_channels == 3:
        out = k
    else:
        out = np.tile(k, (1, 1, math.ceil(in_channels / 3), 1))[:, :, :in_channels] * (3.0 / in_channels)
    return out.astype(kernel.dtype)


def adapt_variables(variables: Mapping[str, Any], first_conv: Sequence[str], in_channels: int) -> dict[str, Any]:
    """``variables`` with the first convolution adapted to ``in_channels``; nothing else is copied.

    ``first_conv`` is the kernel's path into ``params``: the family's (``registry.model_config(...).first_conv``).
    """
    path = tuple(first_conv)

    def replace(tree: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        key, rest = keys[0], keys[1:]
        return {**tree, key: replace(tree[key], rest) if rest else adapt_input_conv(tree[key], in_channels)}

    return {**variables, "params": replace(variables["params"], path)}
