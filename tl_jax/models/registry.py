"""One registry of every (arch, source) port: constructor, stages, input size, preprocessing.

``create("resnet50", source="torchvision", num_classes=10)`` builds the Flax module;
``available()`` lists what exists. Constructors are imported lazily so that
listing the registry costs nothing.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn

SOURCES = ("torchvision", "keras")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    arch: str
    source: str
    family: str            # resnet | vgg | inception: selects the weight name map
    constructor: str       # "module:function"
    kwargs: tuple          # constructor arguments, as (name, value) pairs
    stage_names: tuple[str, ...]
    preprocessing: str     # key of tl_jax.preprocess.SPECS
    input_size: int

    def build(self, **overrides: Any) -> nn.Module:
        module, fn = self.constructor.split(":")
        ctor: Callable[..., nn.Module] = getattr(importlib.import_module(module), fn)
        return ctor(**{**dict(self.kwargs), **overrides})

    @property
    def backbone_stages(self) -> tuple[str, ...]:
        """Every stage but the head: ``frozen_depth`` ranges over 0..len(backbone_stages)."""
        return self.stage_names[:-1]


_RESNET = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
_VGG = ("block1", "block2", "block3", "block4", "block5", "classifier", "head")
_INCEPTION = ("stem", "mixed5b", "mixed5c", "mixed5d", "mixed6a", "mixed6b", "mixed6c", "mixed6d",
              "mixed6e", "mixed7a", "mixed7b", "mixed7c", "head")

_REGISTRY: dict[tuple[str, str], ModelInfo] = {}


def _add(arch: str, source: str, family: str, constructor: str, stages: tuple[str, ...],
         preprocessing: str, input_size: int, **kwargs: Any) -> None:
    _REGISTRY[(arch, source)] = ModelInfo(arch, source, family, constructor, tuple(sorted(kwargs.items())),
                                          stages, preprocessing, input_size)


for _d in (18, 34, 50, 101, 152):
    _add(f"resnet{_d}", "torchvision", "resnet", "tl_jax.models.resnet:resnet", _RESNET, "torchvision", 224,
         depth=_d, variant="torchvision")
for _d in (50, 101, 152):
    _add(f"resnet{_d}", "keras", "resnet", "tl_jax.models.resnet:resnet", _RESNET, "caffe", 224,
         depth=_d, variant="keras")
for _d in (11, 13, 16, 19):
    for _bn in (False, True):
        _add(f"vgg{_d}" + ("_bn" if _bn else ""), "torchvision", "vgg", "tl_jax.models.vgg:vgg", _VGG,
             "torchvision", 224, depth=_d, batch_norm=_bn, variant="torchvision")
for _d in (16, 19):
    _add(f"vgg{_d}", "keras", "vgg", "tl_jax.models.vgg:vgg", _VGG, "caffe", 224,
         depth=_d, batch_norm=False, variant="keras")
_add("inception_v3", "torchvision", "inception", "tl_jax.models.inception:inception_v3", _INCEPTION,
     "torchvision_inception", 299, variant="torchvision")
_add("inception_v3", "keras", "inception", "tl_jax.models.inception:inception_v3", _INCEPTION, "tf", 299,
     variant="keras")

# Keras spells its applications in CamelCase; accept those names too.
_ALIASES = {"VGG16": "vgg16", "VGG19": "vgg19", "ResNet50": "resnet50", "ResNet101": "resnet101",
            "ResNet152": "resnet152", "InceptionV3": "inception_v3"}


def available() -> list[tuple[str, str]]:
    """Every supported (arch, source) pair."""
    return sorted(_REGISTRY)


def info(arch: str, source: str = "torchvision") -> ModelInfo:
    key = (_ALIASES.get(arch, arch), source)
    if key not in _REGISTRY:
        archs = sorted({a for a, s in _REGISTRY if s == source})
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        raise ValueError(f"unknown arch {arch!r} for source {source!r}; available: {', '.join(archs)}")
    return _REGISTRY[key]


def create(arch: str, source: str = "torchvision", **kwargs: Any) -> nn.Module:
    """Build the Flax module, e.g. ``create("resnet50", "keras", num_classes=5, frozen_depth=3)``."""
    return info(arch, source).build(**kwargs)
