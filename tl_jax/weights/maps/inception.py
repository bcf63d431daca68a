"""Inception-V3 name maps: torchvision ``Mixed_5b.branch1x1.conv.weight``, Keras ``conv2d_N`` by order.

torchvision names every module, so its map is a handful of regexes. Keras
``InceptionV3`` leaves its 94 conv and 94 BatchNorm layers auto-named
(``conv2d_17``, ``batch_normalization_17``); the numbers depend on the Keras
generation (the official file starts at ``conv2d_1``, Keras 3 at ``conv2d``) and
on how many layers the session created before the model. Only their ranks are
stable: the k-th conv created is the k-th entry of :data:`KERAS_CREATION_ORDER`.
The file's ``layer_names`` order is a topological order, not the creation order,
so ranks come from the numeric suffixes.
"""
from __future__ import annotations

import re

from tl_jax.models.inception import MIXED
from tl_jax.weights.convert import ConversionError, conv_oihw_to_hwio as conv, linear_to_dense as linear
from tl_jax.weights.maps import TORCH_BN_COUNTER, keras_roles, torch_bn, weight_bias

# Our conv + BN units in Keras creation order (= torchvision attribute order), per block kind.
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_UNITS = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
# Keras mixed0..mixed10 are our mixed5b..mixed7c: (stage, block kind) in forward order.
_BLOCKS = tuple((stage, kind) for stage, kind, _ in MIXED)
KERAS_CREATION_ORDER: tuple[str, ...] = (tuple(f"stem/{u}" for u in _STEM)
                                         + tuple(f"{s}/{u}" for s, kind in _BLOCKS for u in _UNITS[kind]))


def torchvision_rules(model_cfg):
    """``Conv2d_1a_3x3.*`` -> ``stem/Conv2d_1a_3x3/*``, ``Mixed_5b.<unit>.*`` -> ``mixed5b/<unit>/*``."""
    stem = r"(Conv2d_\w+)"
    mixed = r"Mixed_(\d[a-e])\.(\w+)"
    return [
        (rf"{stem}\.conv\.weight", r"params/stem/\1/conv/kernel", conv),
        (rf"{mixed}\.conv\.weight", r"params/mixed\1/\2/conv/kernel", conv),
        *torch_bn(rf"{stem}\.bn", r"stem/\1/bn"),
        *torch_bn(rf"{mixed}\.bn", r"mixed\1/\2/bn"),
        TORCH_BN_COUNTER,
        # The train-time auxiliary classifier is not ported (see tl_jax.models.inception).
        (r"AuxLogits\..*", "", None),
        *weight_bias(r"fc", "head", linear),
    ]


def timm_rules(model_cfg):
    """timm's Inception-v3 keeps torchvision's names (and has no auxiliary classifier)."""
    return torchvision_rules(model_cfg)


def torch_architecture_problem(state):
    return None


# Auto-names: "conv2d", "conv2d_7"; BatchNorm also "batch_normalization_v1_7" (TF 1.x tf.keras).
_KERAS_AUTO = {"conv": re.compile(r"conv2d(?:_(\d+))?"),
               "bn": re.compile(r"batch_normalization(?:_v[12])?(?:_(\d+))?")}


def keras_canonical_names(weights):
    """Rename Keras' auto-named layers by creation rank to our module paths.

    ``conv2d_k/kernel`` (the k-th conv, ranked by suffix, no suffix = 0) ->
    ``<KERAS_CREATION_ORDER[k]>/conv/kernel``; BatchNorm likewise to ``.../bn/...``;
    ``predictions`` -> ``head``. Other layer names pass through (and are then
    reported as unexpected by the strict converter).
    """
    layer_role = [(name, *name.rsplit("/", 1)) for name in weights]
    renamed: dict[str, str] = {}
    for kind, regex in _KERAS_AUTO.items():
        found = {layer: int(m.group(1) or 0) for _, layer, _ in layer_role
                 if (m := regex.fullmatch(layer)) is not None}
        if not found:
            continue
        if len(found) != len(KERAS_CREATION_ORDER):
            raise ConversionError(f"Keras InceptionV3 weights should hold {len(KERAS_CREATION_ORDER)} auto-named "
                                  f"{kind} layers ({regex.pattern}), found {len(found)}")
        ranked = sorted(found, key=found.__getitem__)
        if len({found[layer] for layer in ranked}) != len(ranked):
            raise ConversionError(f"Keras {kind} layer numbers are not unique, cannot order them: "
                                  f"{', '.join(ranked[:5])}...")
        renamed.update({layer: f"{path}/{kind}" for layer, path in zip(ranked, KERAS_CREATION_ORDER)})
    renamed["predictions"] = "head"
    return {f"{renamed.get(layer, layer)}/{role}": weights[name] for name, layer, role in layer_role}


def keras_rules(model_cfg):
    return keras_roles()
