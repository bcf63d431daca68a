"""ResNet name maps: torchvision (and timm) ``layer1.0.conv1.weight``, Keras ``conv2_block1_1_conv``,
transformers ``resnet.encoder.stages.0.layers.0.layer.0.convolution.weight``."""
from __future__ import annotations

import re

from tl_jax.weights.convert import conv_oihw_to_hwio as conv, linear_to_dense as linear
from tl_jax.weights.maps import TORCH_BN_COUNTER, keras_roles, torch_bn, weight_bias


def torchvision_rules(model_cfg):
    return [
        (r"conv1\.weight", "params/stem/conv1/kernel", conv),
        (r"layer(\d)\.(\d+)\.conv(\d)\.weight", r"params/layer\1/block\2/conv\3/kernel", conv),
        (r"layer(\d)\.(\d+)\.downsample\.0\.weight", r"params/layer\1/block\2/downsample_conv/kernel", conv),
        *torch_bn(r"bn1", "stem/bn1"),
        *torch_bn(r"layer(\d)\.(\d+)\.bn(\d)", r"layer\1/block\2/bn\3"),
        *torch_bn(r"layer(\d)\.(\d+)\.downsample\.1", r"layer\1/block\2/downsample_bn"),
        TORCH_BN_COUNTER,
        *weight_bias(r"fc", "head", linear),
    ]


def timm_rules(model_cfg):
    """timm's ResNet-B keeps torchvision's key names."""
    return torchvision_rules(model_cfg)


def torch_architecture_problem(state):
    """Why a torchvision-keyed state_dict is not a plain ResNet (v1.5), or None. Checked before conversion."""
    keys = set(state)
    if "conv1.0.weight" in keys:
        return "a deep stem (conv1.0, conv1.1, ...: resnet*c/d/s), not a single 7x7 conv1"
    if any(re.fullmatch(r"layer\d\.\d+\.downsample\.2\.weight", k) for k in keys):
        return "an average-pool shortcut (downsample.1 is a conv after a pool: resnet*d), not a strided 1x1 conv"
    if any(".se." in k or ".attn." in k for k in keys):
        return "squeeze-excitation or attention modules in the blocks (SE-ResNet / ECA / ...)"
    conv1, conv2 = state.get("layer1.0.conv1.weight"), state.get("layer1.0.conv2.weight")
    if conv1 is not None and conv2 is not None and conv2.ndim == 4 and conv2.shape[1] != conv1.shape[0]:
        return (f"grouped 3x3 convolutions (layer1.0.conv2 takes {conv2.shape[1]} of {conv1.shape[0]} channels "
                "per group: ResNeXt)")
    return None


# transformers' ResNet: stage i, layer j, conv k of ``layer`` -> our layer{i+1}/block{j}/conv{k+1}.
def hf_rules(model_cfg):
    stage = r"resnet\.encoder\.stages\.{i}\.layers\.(\d+)"
    units = [("resnet\\.embedder\\.embedder", "stem/conv1", "stem/bn1")]
    for i in range(4):
        units.append((stage.format(i=i) + r"\.shortcut", rf"layer{i + 1}/block\1/downsample_conv",
                      rf"layer{i + 1}/block\1/downsample_bn"))
        units += [(stage.format(i=i) + rf"\.layer\.{k}", rf"layer{i + 1}/block\1/conv{k + 1}",
                   rf"layer{i + 1}/block\1/bn{k + 1}") for k in range(3)]
    rules = []
    for src, conv_dst, bn_dst in units:
        rules.append((rf"{src}\.convolution\.weight", f"params/{conv_dst}/kernel", conv))
        rules += torch_bn(rf"{src}\.normalization", bn_dst)
    return rules + [TORCH_BN_COUNTER, *weight_bias(r"classifier\.1", "head", linear)]


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


def keras_rules(model_cfg):
    return keras_roles()
