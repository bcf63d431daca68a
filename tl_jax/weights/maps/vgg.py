"""VGG name maps: torchvision ``features.{idx}`` / ``classifier.{0,3,6}``, Keras ``block{b}_conv{i}``.

torchvision numbers ``features`` by position in one ``nn.Sequential`` (conv, [bn,]
relu per conv, one max-pool per block), so the index of a conv depends on the
depth and on BatchNorm: the table is generated from the model's block layout.
"""
from __future__ import annotations

import re

import numpy as np

from tl_jax.models.vgg import BLOCK_CONVS
from tl_jax.weights.convert import conv_oihw_to_hwio as conv, linear_to_dense as linear, transposed
from tl_jax.weights.maps import keras_roles, torch_bn, weight_bias


def features_layout(depth: int, batch_norm: bool) -> list[tuple[int, int, int, bool]]:
    """``(index, block, conv, is_bn)`` of every weighted module of ``vgg{depth}[_bn].features``.

    Blocks and convs are numbered from 1, as in our module names (``block2/conv1``).
    """
    out, idx = [], 0
    for block, n in enumerate(BLOCK_CONVS[depth], start=1):
        for i in range(1, n + 1):
            out.append((idx, block, i, False))
            if batch_norm:
                out.append((idx + 1, block, i, True))
            idx += 3 if batch_norm else 2   # conv, [bn,] relu
        idx += 1                            # max-pool
    return out


def _chw_to_hwc(a: np.ndarray) -> np.ndarray:
    """``(out, C, H*W)`` -> ``(H*W*C, out)``; slabs of 16 outputs were fastest here (see ``transposed``)."""
    return transposed(a, (2, 1, 0), 0, 16).reshape(-1, a.shape[0])


def _hwc_to_chw(a: np.ndarray) -> np.ndarray:
    """``(H*W, C, out)`` -> ``(out, C, H*W)``; slabs of 8 channels were fastest here."""
    return transposed(a, (2, 1, 0), 1, 8)


def fc6_chw_to_hwc(a: np.ndarray, channels: int = 512, size: int = 7) -> np.ndarray:
    """torch fc6 ``(out, C*H*W)`` -> Flax ``(H*W*C, out)``: torch flattens NCHW, we flatten NHWC."""
    out = a.shape[0]
    return _chw_to_hwc(a.reshape(out, channels, size * size))


def torchvision_rules(model_cfg):
    kw = dict(model_cfg.kwargs)
    rules = []
    for idx, block, i, is_bn in features_layout(kw["depth"], kw["batch_norm"]):
        rules += (torch_bn(rf"features\.{idx}", f"block{block}/bn{i}") if is_bn
                  else weight_bias(rf"features\.{idx}", f"block{block}/conv{i}", conv))
    return rules + [
        (r"features\.\d+\.num_batches_tracked", "", None),
        *weight_bias(r"classifier\.0", "classifier/fc6", fc6_chw_to_hwc),
        *weight_bias(r"classifier\.3", "classifier/fc7", linear),
        *weight_bias(r"classifier\.6", "head", linear),
    ]


def fc6_conv_to_hwc(a: np.ndarray) -> np.ndarray:
    """timm's fc6 as a 7x7 conv ``(out, C, 7, 7)`` -> Flax ``(7*7*C, out)`` (NHWC flatten order)."""
    return _chw_to_hwc(a.reshape(a.shape[0], a.shape[1], -1))


def fc7_conv_to_dense(a: np.ndarray) -> np.ndarray:
    """timm's fc7 as a 1x1 conv ``(out, in, 1, 1)`` -> ``(in, out)``."""
    return a.reshape(a.shape[0], a.shape[1]).T


def timm_rules(model_cfg):
    """timm's VGG: torchvision's ``features``; fc6/fc7 as convs under ``pre_logits``; the head is ``head.fc``.

    Equal to torchvision's computation up to 224 px (timm adaptive-pools smaller maps to 7x7 too);
    above 224 timm slides fc6 over the larger map and averages after fc7, while our port (like
    torchvision) pools to 7x7 first, so logits differ there.
    """
    fc = [r for r in torchvision_rules(model_cfg) if not r[0].startswith("classifier")]
    return fc + [
        *weight_bias(r"pre_logits\.fc1", "classifier/fc6", fc6_conv_to_hwc),
        *weight_bias(r"pre_logits\.fc2", "classifier/fc7", fc7_conv_to_dense),
        *weight_bias(r"head\.fc", "head", linear),
    ]


def torch_architecture_problem(state):
    return None


# The way back (tl_jax.weights.inverse): each fc6/fc7 transform above and its exact inverse.
def fc6_hwc_to_chw(a: np.ndarray, channels: int = 512, size: int = 7) -> np.ndarray:
    """Flax ``(H*W*C, out)`` -> torch fc6 ``(out, C*H*W)``."""
    out = a.shape[1]
    return _hwc_to_chw(a.reshape(size * size, channels, out)).reshape(out, channels * size * size)


def fc6_hwc_to_conv(a: np.ndarray, channels: int = 512, size: int = 7) -> np.ndarray:
    """Flax ``(7*7*C, out)`` -> timm's fc6 conv ``(out, C, 7, 7)``."""
    return _hwc_to_chw(a.reshape(size * size, channels, a.shape[1])).reshape(a.shape[1], channels, size, size)


def dense_to_fc7_conv(a: np.ndarray) -> np.ndarray:
    """``(in, out)`` -> timm's fc7 1x1 conv ``(out, in, 1, 1)``."""
    return a.T[:, :, None, None]


INVERSES = {fc6_chw_to_hwc: fc6_hwc_to_chw, fc6_conv_to_hwc: fc6_hwc_to_conv, fc7_conv_to_dense: dense_to_fc7_conv}


_KERAS_LAYER = {"fc1": "classifier/fc6", "fc2": "classifier/fc7", "predictions": "head"}
_KERAS_CONV = re.compile(r"block(\d)_conv(\d)")


def keras_canonical_names(weights):
    """``block2_conv1/kernel`` -> ``block2/conv1/kernel``; ``fc1``/``fc2``/``predictions`` -> fc6/fc7/head."""
    out = {}
    for name, a in weights.items():
        layer, role = name.rsplit("/", 1)
        m = _KERAS_CONV.fullmatch(layer)
        layer = f"block{m[1]}/conv{m[2]}" if m else _KERAS_LAYER.get(layer, layer)
        out[f"{layer}/{role}"] = a
    return out


def keras_rules(model_cfg):
    # Keras kernels are already HWIO / (in, out) and fc1 already flattens NHWC.
    return keras_roles("kernel", "bias")
