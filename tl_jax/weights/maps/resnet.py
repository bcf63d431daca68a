"""ResNet name maps: torchvision ``layer1.0.conv1.weight``, Keras ``conv2_block1_1_conv``."""
from __future__ import annotations

import re

from tl_jax.weights.convert import conv_oihw_to_hwio as conv, copy, linear_to_dense as linear

_BN = [("weight", "params", "scale"), ("bias", "params", "bias"),
       ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")]


def torchvision_rules(info):
    bn = [(rf"{src}\.{t}", f"{col}/{dst}/{leaf}", copy)
          for src, dst in [(r"bn1", "stem/bn1"), (r"layer(\d)\.(\d+)\.bn(\d)", r"layer\1/block\2/bn\3"),
                           (r"layer(\d)\.(\d+)\.downsample\.1", r"layer\1/block\2/downsample_bn")]
          for t, col, leaf in _BN]
    return [
        (r"conv1\.weight", "params/stem/conv1/kernel", conv),
        (r"layer(\d)\.(\d+)\.conv(\d)\.weight", r"params/layer\1/block\2/conv\3/kernel", conv),
        (r"layer(\d)\.(\d+)\.downsample\.0\.weight", r"params/layer\1/block\2/downsample_conv/kernel", conv),
        *bn,
        (r".*num_batches_tracked", "", None),
        (r"fc\.weight", "params/head/kernel", linear),
        (r"fc\.bias", "params/head/bias", copy),
    ]


_KERAS_ROLE = {"kernel": ("params", "kernel"), "bias": ("params", "bias"), "gamma": ("params", "scale"),
               "beta": ("params", "bias"), "moving_mean": ("batch_stats", "mean"),
               "moving_variance": ("batch_stats", "var")}
_KERAS_BLOCK = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")


def keras_canonical_names(weights):
    """Renumber Keras' 1-based ``conv{2..5}_block{1..}_{0..3}`` into our module paths.

    ``conv3_block2_1_bn/gamma`` -> ``layer2/block1/bn1/gamma``; ``_0_`` is the projection shortcut.
    """
    out = {}
    for name, a in weights.items():
        layer, role = name.rsplit("/", 1)
        m = _KERAS_BLOCK.fullmatch(layer)
        if m:
            s, b, i, kind = m.groups()
            module = f"downsample_{kind}" if i == "0" else f"{kind}{i}"
            layer = f"layer{int(s) - 1}/block{int(b) - 1}/{module}"
        elif layer in ("conv1_conv", "conv1_bn"):
            layer = "stem/" + layer.replace("conv1_", "") + "1"
        elif layer == "predictions":
            layer = "head"
        out[f"{layer}/{role}"] = a
    return out


def keras_rules(info):
    return [(rf"(.*)/{role}", rf"{col}/\1/{leaf}", copy) for role, (col, leaf) in _KERAS_ROLE.items()]
