"""timm state_dicts (Hub ``model.safetensors``, ``.pth`` or ``.bin``) -> Flax variables.

timm itself is never imported: its ResNet-B and Inception-v3 keep torchvision's key names, its
VGG stores fc6/fc7 as convolutions (the family maps' ``timm_rules``); the tags and their
preprocessing are the registry's (``tl_jax/models/timm_tags.py``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from tl_jax.models import registry
from tl_jax.weights import maps
from tl_jax.weights.torchvision import as_numpy, convert_state_dict


def convert_timm(arch: str, source: str | os.PathLike | Mapping[str, Any], model: Any = None, *,
                 allow_nonfinite: bool = False) -> dict[str, Any]:
    """A timm state_dict (``model.safetensors``, ``.pth`` or ``.bin``) -> variables for ``arch``.

    Only timm models whose architecture is one of our ports: ``resnet{18..152}`` (ResNet-B),
    ``vgg*``, ``inception_v3``; ``resnet50d``, ResNeXt, SE-ResNet ... are refused by name.
    """
    model_cfg = registry.model_config(arch, "timm")
    return convert_state_dict(model_cfg, as_numpy(source, allow_nonfinite=allow_nonfinite),
                              maps.family(model_cfg.family).timm_rules(model_cfg), model, source_name="timm")
