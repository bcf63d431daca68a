"""One config per (arch, source): everything tl_jax knows about a published ImageNet classifier.

Every consumer reads the same entry: ``create`` builds the Flax module, the converters take the
family's name map and the head key, ``tl_jax.weights.fetch`` the file's URL (or Hub location) and
hash, the weights store the stages, preprocessing and sizes, the benchmark's torchvision peer the
same stages cut out of the torch model, and the README the published top-1.

A source publishes one or more weights per architecture, each under a *tag* (torchvision's
``IMAGENET1K_V1`` / ``IMAGENET1K_V2``, timm's ``a1_in1k``, ...). Tags share the architecture and the
name map; they differ in file, preprocessing and accuracy. The first tag is the default.
Sources: ``torchvision`` (``.pth``), ``keras`` (keras.applications ``.h5`` / Keras 3 files),
``timm`` (Hub ``model.safetensors`` or a ``.pth`` / ``.bin``), ``hf`` (transformers'
``microsoft/resnet-*``: ``model.safetensors`` + ``config.json``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from tl_jax import preprocess
from tl_jax.models import inception, resnet, vgg
from tl_jax.models.timm_tags import TIMM_TAGS

SOURCES = ("torchvision", "keras", "timm", "hf")
TORCHVISION_BASE = "https://download.pytorch.org/models/"
KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A published ImageNet weights file: where it is, how to check it, how to feed it, how good it is."""
    tag: str
    url: str                       # a direct download; "" when the file lives on the Hugging Face Hub only
    hash_name: str                 # "sha256": ``digest`` is the prefix in the file name (torch.hub's check);
    digest: str                    # "md5": Keras'; "": none published (the Hub checks its own files)
    top1: float | None             # published ImageNet-1k validation top-1, %; None: not published
    preprocessing: preprocess.PreprocessSpec
    hub: tuple[str, str] | None = None   # (repo_id, filename) on the Hugging Face Hub
    top1_eval: str = ""            # how ``top1`` was measured, where it differs from ``preprocessing``

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else self.hub[1]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One (arch, source) pair. ``torch_stages`` names, per stage, the torchvision modules that
    compute it (``"features[0:5]"`` slices a Sequential, ``"flatten"`` is ``torch.flatten``)."""
    arch: str
    source: str
    family: str                       # resnet | vgg | inception: selects the weight name map
    build_fn: Callable[..., nn.Module]
    kwargs: tuple                     # constructor arguments, as (name, value) pairs
    stage_names: tuple[str, ...]
    weights_files: tuple[WeightsFile, ...]   # the first is the default
    head_key: str                     # the source's classifier bias: its length is the class count
    torch_stages: tuple[tuple[str, ...], ...] = ()

    def build(self, **overrides: Any) -> nn.Module:
        return self.build_fn(**{**dict(self.kwargs), **overrides})

    @property
    def weights(self) -> WeightsFile:
        """The default published weights."""
        return self.weights_files[0]

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(w.tag for w in self.weights_files)

    def weights_for(self, tag: str | None = None) -> WeightsFile:
        """The weights published under ``tag`` (default: the first); an unknown tag lists the known ones."""
        if tag is None:
            return self.weights
        for w in self.weights_files:
            if w.tag == tag:
                return w
        raise ValueError(f"unknown weights {tag!r} for {self.arch} ({self.source}); available: {', '.join(self.tags)}")

    @property
    def preprocessing(self) -> preprocess.PreprocessSpec:
        """The default weights' preprocessing."""
        return self.weights.preprocessing

    @property
    def input_size(self) -> int:
        return self.weights.preprocessing.crop_size


def _tv(file: str, top1: float, tag: str = "IMAGENET1K_V1", spec: str = "torchvision") -> WeightsFile:
    return WeightsFile(tag, TORCHVISION_BASE + file, "sha256", file.rsplit("-", 1)[1].split(".")[0], top1,
                       preprocess.SPECS[spec])


def _keras(path: str, md5: str, top1: float, spec: str) -> WeightsFile:
    return WeightsFile("imagenet", KERAS_BASE + path, "md5", md5, top1, preprocess.SPECS[spec])


def _timm_files(arch: str) -> tuple[WeightsFile, ...]:
    out = []
    for name, size, crop_pct, interpolation, stats, top1, top1_size, top1_crop in TIMM_TAGS:
        model, tag = name.split(".", 1)
        if model != arch:
            continue
        mean, std = ((0.5,) * 3, (0.5,) * 3) if stats == "half" else (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
        spec = preprocess.timm_spec(f"timm:{name}", size, crop_pct, interpolation, mean, std)
        note = "" if (top1_size, top1_crop) == (size, crop_pct) else f"at {top1_size} px, crop {top1_crop:g}"
        out.append(WeightsFile(tag, "", "", "", top1, spec, (f"timm/{name}", "model.safetensors"), note))
    return tuple(out)


def _hf(depth: int) -> WeightsFile:
    # microsoft/resnet-*: ImageNet mean/std, shorter side 224 / 0.875 = 256, bicubic (its preprocessor_config).
    spec = preprocess.timm_spec(f"hf:microsoft/resnet-{depth}", 224, 0.875, "bicubic")
    return WeightsFile("imagenet", "", "", "", None, spec, (f"microsoft/resnet-{depth}", "model.safetensors"))


_RESNET_TORCH = (("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4",),
                 ("avgpool", "flatten", "fc"))
_INCEPTION_TORCH = (("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2"),
                    *((f"Mixed_{s[5:]}",) for s in inception.STAGE_NAMES[1:-1]),
                    ("avgpool", "dropout", "flatten", "fc"))


def _vgg_torch(depth: int, batch_norm: bool) -> tuple[tuple[str, ...], ...]:
    """``features`` holds conv, [bn,] relu per conv and a max-pool per block, in one Sequential."""
    cuts, start = [], 0
    for n in vgg.BLOCK_CONVS[depth]:
        end = start + n * (3 if batch_norm else 2) + 1
        cuts.append((f"features[{start}:{end}]",))
        start = end
    return (*cuts, ("avgpool", "flatten", "classifier[0:6]"), ("classifier[6]",))


_TORCHVISION_RESNET = {18: ("resnet18-f37072fd.pth", 69.758), 34: ("resnet34-b627a593.pth", 73.314),
                       50: ("resnet50-0676ba61.pth", 76.130), 101: ("resnet101-63fe2227.pth", 77.374),
                       152: ("resnet152-394f9c45.pth", 78.312)}
_TORCHVISION_VGG = {(11, False): ("vgg11-8a719046.pth", 69.020), (11, True): ("vgg11_bn-6002323d.pth", 70.370),
                    (13, False): ("vgg13-19584684.pth", 69.928), (13, True): ("vgg13_bn-abd245e5.pth", 71.586),
                    (16, False): ("vgg16-397923af.pth", 71.592), (16, True): ("vgg16_bn-6c64b313.pth", 73.360),
                    (19, False): ("vgg19-dcbb9e9d.pth", 72.376), (19, True): ("vgg19_bn-c79401a0.pth", 74.218)}
# IMAGENET1K_V2 ("new training recipe"): ResNet-50/101/152 only, evaluated at resize 232 / crop 224.
_TORCHVISION_RESNET_V2 = {50: ("resnet50-11ad3fa6.pth", 80.858), 101: ("resnet101-cd907fc2.pth", 81.886),
                          152: ("resnet152-f82ba261.pth", 82.284)}
_KERAS_RESNET = {50: ("2cb95161c43110f7111970584f804107", 74.9), 101: ("f1aeb4b969a6efcfb50fad2f0c20cfc5", 76.4),
                 152: ("100835be76be38e30d865e96f2aaae62", 76.6)}
_KERAS_VGG = {16: ("64373286793e3c8b2b4e3219cbf3544b", 71.3), 19: ("cbe5617147190e668d6c5d5026f83318", 71.3)}

_RESNET_DEPTHS = (18, 34, 50, 101, 152)


def _vgg_kwargs(d: int, bn: bool, variant: str = "torchvision") -> tuple:
    return (("batch_norm", bn), ("depth", d), ("variant", variant))


_CONFIGS: list[ModelConfig] = [
    *(ModelConfig(f"resnet{d}", "torchvision", "resnet", resnet.resnet,
                  (("depth", d), ("variant", "torchvision")), resnet.STAGE_NAMES,
                  (_tv(*file),) + ((_tv(*_TORCHVISION_RESNET_V2[d], "IMAGENET1K_V2", "torchvision_v2"),)
                                   if d in _TORCHVISION_RESNET_V2 else ()),
                  "fc.bias", _RESNET_TORCH) for d, file in _TORCHVISION_RESNET.items()),
    *(ModelConfig(f"resnet{d}", "keras", "resnet", resnet.resnet, (("depth", d), ("variant", "keras")),
                  resnet.STAGE_NAMES,
                  (_keras(f"resnet/resnet{d}_weights_tf_dim_ordering_tf_kernels.h5", *file, "caffe"),),
                  "predictions/bias")
      for d, file in _KERAS_RESNET.items()),
    *(ModelConfig(f"vgg{d}" + ("_bn" if bn else ""), "torchvision", "vgg", vgg.vgg, _vgg_kwargs(d, bn),
                  vgg.STAGE_NAMES, (_tv(*file),), "classifier.6.bias", _vgg_torch(d, bn))
      for (d, bn), file in _TORCHVISION_VGG.items()),
    *(ModelConfig(f"vgg{d}", "keras", "vgg", vgg.vgg, _vgg_kwargs(d, False, "keras"), vgg.STAGE_NAMES,
                  (_keras(f"vgg{d}/vgg{d}_weights_tf_dim_ordering_tf_kernels.h5", *file, "caffe"),),
                  "predictions/bias") for d, file in _KERAS_VGG.items()),
    ModelConfig("inception_v3", "torchvision", "inception", inception.inception_v3, (("variant", "torchvision"),),
                inception.STAGE_NAMES,
                (_tv("inception_v3_google-0cc3c7bd.pth", 77.294, spec="torchvision_inception"),), "fc.bias",
                _INCEPTION_TORCH),
    ModelConfig("inception_v3", "keras", "inception", inception.inception_v3, (("variant", "keras"),),
                inception.STAGE_NAMES,
                (_keras("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                        "9a0d58056eeedaa3f26cb7ebd46da564", 77.9, "tf"),), "predictions/bias"),
    # timm: ResNet-B and VGG are torchvision's architectures (timm keeps fc6/fc7 as convolutions);
    # its Inception-v3 is torchvision's without the input re-normalisation step.
    *(ModelConfig(f"resnet{d}", "timm", "resnet", resnet.resnet, (("depth", d), ("variant", "torchvision")),
                  resnet.STAGE_NAMES, _timm_files(f"resnet{d}"), "fc.bias", _RESNET_TORCH) for d in _RESNET_DEPTHS),
    *(ModelConfig(f"vgg{d}" + ("_bn" if bn else ""), "timm", "vgg", vgg.vgg, _vgg_kwargs(d, bn), vgg.STAGE_NAMES,
                  _timm_files(f"vgg{d}" + ("_bn" if bn else "")), "head.fc.bias") for d, bn in _TORCHVISION_VGG),
    ModelConfig("inception_v3", "timm", "inception", inception.inception_v3,
                (("variant", "torchvision"), ("transform_input", False)), inception.STAGE_NAMES,
                _timm_files("inception_v3"), "fc.bias", _INCEPTION_TORCH),
    # transformers' ResNetForImageClassification (microsoft/resnet-*): v1.5, other key names.
    *(ModelConfig(f"resnet{d}", "hf", "resnet", resnet.resnet, (("depth", d), ("variant", "torchvision")),
                  resnet.STAGE_NAMES, (_hf(d),), "classifier.1.bias") for d in _RESNET_DEPTHS),
]
_REGISTRY = {(c.arch, c.source): c for c in _CONFIGS}

# Keras spells its applications in CamelCase; accept those names too.
_ALIASES = {"VGG16": "vgg16", "VGG19": "vgg19", "ResNet50": "resnet50", "ResNet101": "resnet101",
            "ResNet152": "resnet152", "InceptionV3": "inception_v3"}


def available() -> list[tuple[str, str]]:
    """Every supported (arch, source) pair."""
    return sorted(_REGISTRY)


def info(arch: str, source: str = "torchvision") -> ModelConfig:
    """The config of ``(arch, source)``; an unknown pair raises ValueError listing the known ones."""
    key = (_ALIASES.get(arch, arch), source)
    if key not in _REGISTRY:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        archs = sorted({a for a, s in _REGISTRY if s == source})
        raise ValueError(f"unknown arch {arch!r} for source {source!r}; available: {', '.join(archs)}")
    return _REGISTRY[key]


def create(arch: str, source: str = "torchvision", **kwargs: Any) -> nn.Module:
    """Build the Flax module, e.g. ``create("resnet50", "keras", num_classes=5, frozen_depth=3)``."""
    return info(arch, source).build(**kwargs)
