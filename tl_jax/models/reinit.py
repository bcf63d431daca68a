"""Re-initialise the top stages of a pretrained network, as its source framework would.

Transfer-learning studies copy the first n layers of a pretrained network and re-initialise the
rest before fine-tuning (Yosinski et al. 2014, "How transferable are features in deep neural
networks?"; Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning"). A fair comparison with
the published recipes needs the re-initialised layers drawn exactly as the source framework draws
a fresh model, not with Flax's defaults: torchvision, timm and Hugging Face ResNets use
Kaiming-normal convolutions, torchvision's Inception a truncated normal of std 0.1, Keras
Glorot-uniform everywhere. :data:`RECIPES` states each source's choice; :func:`reinit_stages`
applies it.

Only the variables' tree structure is read: the top-level keys of every collection are the stage
names, a layer is the dict holding its leaves, and the leaf names say what a leaf is: a layer with
a ``kernel`` is a convolution (4-d HWIO kernel) or a Dense layer (2-d (in, out) kernel) and its
``bias`` belongs to it; a layer without one is a BatchNorm (``scale``/``bias`` in ``params``,
``mean``/``var`` in ``batch_stats``; Keras' Inception BatchNorm has no ``scale``, and absent leaves
stay absent).

Values are drawn on the host with numpy. Every leaf has its own stream, seeded by ``(seed, path)``,
so the result depends neither on the dict's order nor on which other stages are re-initialised.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from typing import Any, Mapping, Protocol, Sequence

import jax
import numpy as np

from tl_jax.tree import path_str


# --- initialisers: a leaf's shape and its layer's fans in, values out ------------------------------

class Initialiser(Protocol):
    def draw(self, rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
             dtype: np.dtype) -> np.ndarray: ...


def _uniform(rng, shape, bound, dtype):
    return rng.random(shape, dtype) * dtype.type(2 * bound) - dtype.type(bound)


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        return np.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class Normal:
    """N(0, std²): torch's ``nn.init.normal_(w, 0, std)``."""
    std: float

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        return rng.standard_normal(shape, dtype) * dtype.type(self.std)


@dataclasses.dataclass(frozen=True)
class TruncNormal:
    """N(0, std²) redrawn outside [a, b]; the bounds are absolute, as in torch's ``trunc_normal_``."""
    std: float
    a: float
    b: float

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        x = rng.standard_normal(shape, dtype) * dtype.type(self.std)
        while (bad := (x < self.a) | (x > self.b)).any():
            x[bad] = rng.standard_normal(int(bad.sum()), dtype) * dtype.type(self.std)
        return x


@dataclasses.dataclass(frozen=True)
class KaimingNormalFanOut:
    """torch's ``kaiming_normal_(w, mode="fan_out", nonlinearity="relu")``: std = sqrt(2 / fan_out)."""

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        return Normal(math.sqrt(2.0 / fan_out)).draw(rng, shape, fan_in, fan_out, dtype)


@dataclasses.dataclass(frozen=True)
class TorchDefaultUniform:
    """``nn.Linear``'s / ``nn.Conv2d``'s own reset_parameters, weight and bias alike:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))`` for the weight)."""

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        return _uniform(rng, shape, 1.0 / math.sqrt(fan_in), dtype)


@dataclasses.dataclass(frozen=True)
class GlorotUniform:
    """Keras' ``glorot_uniform``: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""

    def draw(self, rng, shape, fan_in, fan_out, dtype):
        return _uniform(rng, shape, math.sqrt(6.0 / (fan_in + fan_out)), dtype)


ZERO, ONE = Constant(0.0), Constant(1.0)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one source initialises one family. BatchNorm is scale 1, bias 0, mean 0, var 1 everywhere,
    except where ``zero_last_bn`` zeroes the scale of each residual block's last BatchNorm."""
    conv: Initialiser         # convolution kernel
    conv_bias: Initialiser
    dense: Initialiser        # Dense (Linear) kernel
    dense_bias: Initialiser
    zero_last_bn: bool = False
    # Dense layers of the port that the source builds as k x k convolutions: {layer name: k}.
    # They take ``conv``/``conv_bias`` and count the k x k window in fan_out.
    conv_dense: Mapping[str, int] = dataclasses.field(default_factory=dict)


# torch's ResNet and Inception convolutions have no bias (bias=False); should a port carry one, it
# gets what no init loop re-sets: nn.Conv2d's own default, the same uniform as nn.Linear's.
_TORCH_RESNET = Recipe(conv=KaimingNormalFanOut(), conv_bias=TorchDefaultUniform(),
                       dense=TorchDefaultUniform(), dense_bias=TorchDefaultUniform())
_TORCH_VGG = Recipe(conv=KaimingNormalFanOut(), conv_bias=ZERO, dense=Normal(0.01), dense_bias=ZERO)
_TORCH_INCEPTION = Recipe(conv=TruncNormal(0.1, -2.0, 2.0), conv_bias=TorchDefaultUniform(),
                          dense=TruncNormal(0.1, -2.0, 2.0), dense_bias=TorchDefaultUniform())
_KERAS = Recipe(conv=GlorotUniform(), conv_bias=ZERO, dense=GlorotUniform(), dense_bias=ZERO)

#: (source, family) -> Recipe. Checked against the code installed with torchvision 0.29, timm 1.0,
#: transformers 5 and Keras 3.
RECIPES: dict[tuple[str, str], Recipe] = {
    # torchvision/models/resnet.py, ResNet.__init__: Conv2d kaiming_normal_(fan_out, relu),
    # BatchNorm 1/0; fc keeps nn.Linear's default; zero_init_residual defaults to False.
    ("torchvision", "resnet"): _TORCH_RESNET,
    # transformers ResNetPreTrainedModel._init_weights: the same three rules (Linear spelled out).
    ("hf", "resnet"): _TORCH_RESNET,
    # timm/models/resnet.py, ResNet.init_weights: the same, and zero_init_last=True (default)
    # zeroes the weight of each block's last BatchNorm (bn2 basic, bn3 bottleneck).
    ("timm", "resnet"): dataclasses.replace(_TORCH_RESNET, zero_last_bn=True),
    # torchvision/models/vgg.py, VGG.__init__: Conv2d kaiming_normal_(fan_out, relu) + bias 0,
    # BatchNorm 1/0, Linear (fc6, fc7, fc8) normal(0, 0.01) + bias 0.
    ("torchvision", "vgg"): _TORCH_VGG,
    # timm/models/vgg.py, VGG._initialize_weights: the same loop, but its pre_logits (ConvMlp)
    # builds fc6 as a 7x7 and fc7 as a 1x1 Conv2d, so those take the Kaiming rule (fan_out 49*4096
    # for fc6); the head (ClassifierHead) is an nn.Linear: normal(0, 0.01).
    ("timm", "vgg"): dataclasses.replace(_TORCH_VGG, conv_dense={"fc6": 7, "fc7": 1}),
    # torchvision/models/inception.py, Inception3.__init__: Conv2d and Linear trunc_normal_(std=0.1,
    # a=-2, b=2) (std from the module's ``stddev`` attribute where set: only the aux classifier's
    # fc, 0.001, which is not ported; the aux conv1's 0.01 sits on BasicConv2d, not on its Conv2d,
    # so the loop never reads it), BatchNorm 1/0; the fc bias keeps nn.Linear's default.
    ("torchvision", "inception"): _TORCH_INCEPTION,
    # timm/models/inception_v3.py, InceptionV3.__init__: the same loop (timm's trunc_normal_, same
    # a=-2, b=2); ConvNormAct's BatchNormAct2d is a BatchNorm2d; the fc is an nn.Linear.
    ("timm", "inception"): _TORCH_INCEPTION,
    # keras.applications VGG16/19, ResNet50/101/152, InceptionV3 pass no initialisers: Conv2D and
    # Dense default to glorot_uniform kernels and zero biases; BatchNormalization to gamma 1,
    # beta 0, moving mean 0, moving variance 1.
    ("keras", "resnet"): _KERAS,
    ("keras", "vgg"): _KERAS,
    ("keras", "inception"): _KERAS,
}


# --- the tree walk ---------------------------------------------------------------------------------

def reinit_stages(variables: Mapping[str, Any], *, family: str, source: str, stage_names: Sequence[str],
                  first: str | int, seed: int) -> dict[str, Any]:
    """``variables`` with every stage from ``first`` to the end (the head included) freshly drawn.

    ``first`` is a stage name or an index into ``stage_names``; negative indices count from the end
    as in Python (``-1``: the head only, ``-len(stage_names)``: everything). Re-initialised leaves
    are numpy arrays of the input's dtypes, drawn with ``source``'s initialisers for ``family``
    (see :data:`RECIPES`) from ``seed``; BatchNorm gets scale 1 (or 0, see ``zero_last_bn``), bias 0,
    mean 0, var 1. Leaves of earlier stages are returned as they are (the same objects).
    """
    recipe = _recipe(family, source)
    names = tuple(stage_names)
    fresh = set(names[_first_index(names, first):])
    _check_stages(variables, names)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"reinit_stages: seed must be a non-negative integer, got {seed!r}")
    params = variables.get("params", {})

    def leaf(path, x):
        keys = tuple(path_str(path).split("/"))
        return _draw(recipe, keys, x, params, int(seed)) if keys[1] in fresh else x
    return jax.tree_util.tree_map_with_path(leaf, dict(variables))


def _recipe(family: str, source: str) -> Recipe:
    if (source, family) not in RECIPES:
        known = ", ".join(f"{s}/{f}" for s, f in RECIPES)
        raise ValueError(f"reinit_stages: no initialisers for source {source!r}, family {family!r}; known: {known}")
    return RECIPES[source, family]


def _first_index(names: tuple[str, ...], first: str | int) -> int:
    listed = ", ".join(names)
    if isinstance(first, str):
        if first not in names:
            raise ValueError(f"reinit_stages: unknown stage {first!r}; stages are {listed}")
        return names.index(first)
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or not -len(names) <= first < len(names):
        raise ValueError(f"reinit_stages: stage index {first!r} out of range "
                         f"[{-len(names)}, {len(names) - 1}]; stages are {listed}")
    return int(first) % len(names)


def _check_stages(variables: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for collection, tree in variables.items():
        extra = sorted(set(tree) - set(names))
        if extra:
            raise ValueError(f"reinit_stages: {collection} holds {', '.join(extra)}, not among the stages "
                             f"{', '.join(names)}")


def _draw(recipe: Recipe, keys: tuple[str, ...], x: Any, params: Mapping[str, Any], seed: int) -> np.ndarray:
    """A fresh value for the leaf at ``keys`` = (collection, stage, ..., layer, leaf name)."""
    layer, name = keys[1:-1], keys[-1]
    kernel = _lookup(params, layer).get("kernel")
    init, fan_in, fan_out = _initialiser(recipe, layer, name, kernel, params)
    dtype = np.dtype(x.dtype)
    work = np.float64 if dtype == np.float64 else np.float32
    value = init.draw(_leaf_rng(seed, keys), tuple(x.shape), fan_in, fan_out, np.dtype(work))
    return np.asarray(value).astype(dtype, copy=False)


def _initialiser(recipe: Recipe, layer: tuple[str, ...], name: str, kernel: Any,
                 params: Mapping[str, Any]) -> tuple[Any, int, int]:
    where = "/".join((*layer, name))
    if kernel is None:  # BatchNorm
        if name == "scale":
            return (ZERO if recipe.zero_last_bn and _is_last_block_bn(layer, params) else ONE), 0, 0
        if name in ("bias", "mean", "var"):
            return (ONE if name == "var" else ZERO), 0, 0
        raise ValueError(f"reinit_stages: no initialiser for BatchNorm leaf {where!r}")
    window = recipe.conv_dense.get(layer[-1]) if len(kernel.shape) == 2 else None
    if len(kernel.shape) == 4 or window is not None:
        rules = (recipe.conv, recipe.conv_bias)
    elif len(kernel.shape) == 2:
        rules = (recipe.dense, recipe.dense_bias)
    else:
        raise ValueError(f"reinit_stages: {where!r}: kernel of shape {tuple(kernel.shape)} is neither "
                         "a 2-d Dense nor a 4-d convolution kernel")
    if name not in ("kernel", "bias"):
        raise ValueError(f"reinit_stages: no initialiser for leaf {where!r}")
    fan_in, fan_out = _fans(tuple(kernel.shape), window or 1)
    return rules[name == "bias"], fan_in, fan_out


def _fans(kernel_shape: tuple[int, ...], window: int) -> tuple[int, int]:
    """(fan_in, fan_out) of an HWIO or (in, out) kernel, as torch and Keras count them (the
    receptive field times the channels); ``window``: a Dense kernel that is a window x window conv."""
    receptive = math.prod(kernel_shape[:-2])
    return kernel_shape[-2] * receptive, kernel_shape[-1] * receptive * window * window


_BLOCK_BN = re.compile(r"bn(\d+)")


def _is_last_block_bn(layer: tuple[str, ...], params: Mapping[str, Any]) -> bool:
    """``<stage>/block<i>/bn<k>`` with the largest k in its block (timm's ``zero_init_last``; the
    shortcut's ``downsample_bn`` and the stem's BatchNorm are no residual branch's last)."""
    if len(layer) != 3 or not re.fullmatch(r"block\d+", layer[1]) or not _BLOCK_BN.fullmatch(layer[2]):
        return False
    numbers = [int(m.group(1)) for k in _lookup(params, layer[:2]) if (m := _BLOCK_BN.fullmatch(k))]
    return int(_BLOCK_BN.fullmatch(layer[2]).group(1)) == max(numbers)


def _lookup(tree: Mapping[str, Any], keys: Sequence[str]) -> Mapping[str, Any]:
    for k in keys:
        tree = tree.get(k, {}) if isinstance(tree, Mapping) else {}
    return tree if isinstance(tree, Mapping) else {}


def _leaf_rng(seed: int, keys: tuple[str, ...]) -> np.random.Generator:
    """A stream of its own for every leaf: seeded by ``seed`` and a hash of the leaf's path."""
    digest = hashlib.sha256("/".join(keys).encode()).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))
