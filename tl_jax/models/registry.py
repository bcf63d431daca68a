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
from tl_jax.models.timm_tags import TIMM_TAGS, TimmTag

SOURCES = ("torchvision", "keras", "timm", "hf")
TORCHVISION_BASE = "https://download.pytorch.org/models/"
KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """What every config of one architecture family shares, whatever the source publishing its weights."""
    name: str                          # resnet | vgg | inception: selects the weight name map
    build_fn: Callable[..., nn.Module]
    stage_names: tuple[str, ...]
    first_conv: tuple[str, ...]        # the first convolution's kernel (HWIO), as a path into ``params``


RESNET = Family(name="resnet", build_fn=resnet.resnet, stage_names=resnet.STAGE_NAMES,
                first_conv=("stem", "conv1", "kernel"))
VGG = Family(name="vgg", build_fn=vgg.vgg, stage_names=vgg.STAGE_NAMES, first_conv=("block1", "conv1", "kernel"))
INCEPTION = Family(name="inception", build_fn=inception.inception_v3, stage_names=inception.STAGE_NAMES,
                   first_conv=("stem", "Conv2d_1a_3x3", "conv", "kernel"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightsFile:
    """A published ImageNet weights file: where it is, how to check it, how to feed it, how good it is."""
    tag: str
    url: str = ""                  # a direct download; "" when the file lives on the Hugging Face Hub only
    hash_name: str = ""            # "sha256": ``digest`` is the prefix in the file name (torch.hub's check);
    digest: str = ""               # "md5": Keras'; "": none published (the Hub checks its own files)
    top1: float | None             # published ImageNet-1k validation top-1, %; None: not published
    preprocessing: preprocess.PreprocessSpec
    hub: tuple[str, str] | None = None   # (repo_id, filename) on the Hugging Face Hub
    top1_eval: str = ""            # how ``top1`` was measured, where it differs from ``preprocessing``

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else self.hub[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One (arch, source) pair. ``torch_stages`` names, per stage, the torchvision modules that
    compute it (``"features[0:5]"`` slices a Sequential, ``"flatten"`` is ``torch.flatten``)."""
    arch: str
    source: str
    family_spec: Family               # what the family shares: ``family``, ``build_fn``, ``stage_names``, ...
    kwargs: tuple                     # constructor arguments, as (name, value) pairs
    weights_files: tuple[WeightsFile, ...]   # the first is the default
    head_key: str                     # the source's classifier bias: its length is the class count
    torch_stages: tuple[tuple[str, ...], ...] = ()

    @property
    def family(self) -> str:
        """resnet | vgg | inception: selects the weight name map."""
        return self.family_spec.name

    @property
    def build_fn(self) -> Callable[..., nn.Module]:
        return self.family_spec.build_fn

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.family_spec.stage_names

    @property
    def first_conv(self) -> tuple[str, ...]:
        """The first convolution's kernel, as a path into ``params`` (what ``in_channels`` adapts)."""
        return self.family_spec.first_conv

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


def _tv(*, file: str, top1: float, tag: str = "IMAGENET1K_V1", spec: str = "torchvision") -> WeightsFile:
    """A torchvision file: torch.hub checks the sha256 prefix its name ends with (``resnet18-f37072fd.pth``)."""
    return WeightsFile(tag=tag, url=TORCHVISION_BASE + file, hash_name="sha256",
                       digest=file.rsplit("-", 1)[1].split(".")[0], top1=top1, preprocessing=preprocess.SPECS[spec])


def _keras(*, path: str, md5: str, top1: float, spec: str) -> WeightsFile:
    return WeightsFile(tag="imagenet", url=KERAS_BASE + path, hash_name="md5", digest=md5, top1=top1,
                       preprocessing=preprocess.SPECS[spec])


def _timm(tag: TimmTag) -> WeightsFile:
    spec = preprocess.timm_spec(f"timm:{tag.name}", crop_size=tag.input_size, crop_pct=tag.crop_pct,
                                interpolation=tag.interpolation, mean=tag.mean, std=tag.std)
    size, crop = tag.test_size
    note = "" if tag.top1 is None or tag.test_size == (tag.input_size, tag.crop_pct) else f"at {size} px, crop {crop:g}"
    return WeightsFile(tag=tag.tag, top1=tag.top1, preprocessing=spec, hub=(tag.hf_hub_id, "model.safetensors"),
                       top1_eval=note)


def _hf(depth: int) -> WeightsFile:
    # microsoft/resnet-*: ImageNet mean/std, shorter side 224 / 0.875 = 256, bicubic (its preprocessor_config).
    spec = preprocess.timm_spec(f"hf:microsoft/resnet-{depth}", crop_size=224, crop_pct=0.875, interpolation="bicubic")
    return WeightsFile(tag="imagenet", top1=None, preprocessing=spec,
                       hub=(f"microsoft/resnet-{depth}", "model.safetensors"))


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


_RESNET_DEPTHS = (18, 34, 50, 101, 152)
_VGG_DEPTHS = (11, 13, 16, 19)

# Every published file, by architecture; a tuple lists an architecture's tags, the default first.
_TORCHVISION_RESNET = {
    18: (_tv(file="resnet18-f37072fd.pth", top1=69.758),),
    34: (_tv(file="resnet34-b627a593.pth", top1=73.314),),
    # IMAGENET1K_V2 ("new training recipe"): ResNet-50/101/152 only, evaluated at resize 232 / crop 224.
    50: (_tv(file="resnet50-0676ba61.pth", top1=76.130),
         _tv(file="resnet50-11ad3fa6.pth", top1=80.858, tag="IMAGENET1K_V2", spec="torchvision_v2")),
    101: (_tv(file="resnet101-63fe2227.pth", top1=77.374),
          _tv(file="resnet101-cd907fc2.pth", top1=81.886, tag="IMAGENET1K_V2", spec="torchvision_v2")),
    152: (_tv(file="resnet152-394f9c45.pth", top1=78.312),
          _tv(file="resnet152-f82ba261.pth", top1=82.284, tag="IMAGENET1K_V2", spec="torchvision_v2")),
}
_TORCHVISION_VGG = {
    "vgg11": _tv(file="vgg11-8a719046.pth", top1=69.020), "vgg11_bn": _tv(file="vgg11_bn-6002323d.pth", top1=70.370),
    "vgg13": _tv(file="vgg13-19584684.pth", top1=69.928), "vgg13_bn": _tv(file="vgg13_bn-abd245e5.pth", top1=71.586),
    "vgg16": _tv(file="vgg16-397923af.pth", top1=71.592), "vgg16_bn": _tv(file="vgg16_bn-6c64b313.pth", top1=73.360),
    "vgg19": _tv(file="vgg19-dcbb9e9d.pth", top1=72.376), "vgg19_bn": _tv(file="vgg19_bn-c79401a0.pth", top1=74.218),
}
_TORCHVISION_INCEPTION = _tv(file="inception_v3_google-0cc3c7bd.pth", top1=77.294, spec="torchvision_inception")
_KERAS_RESNET = {
    50: _keras(path="resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5", md5="2cb95161c43110f7111970584f804107",
               top1=74.9, spec="caffe"),
    101: _keras(path="resnet/resnet101_weights_tf_dim_ordering_tf_kernels.h5", md5="f1aeb4b969a6efcfb50fad2f0c20cfc5",
                top1=76.4, spec="caffe"),
    152: _keras(path="resnet/resnet152_weights_tf_dim_ordering_tf_kernels.h5", md5="100835be76be38e30d865e96f2aaae62",
                top1=76.6, spec="caffe"),
}
_KERAS_VGG = {
    16: _keras(path="vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5", md5="64373286793e3c8b2b4e3219cbf3544b",
               top1=71.3, spec="caffe"),
    19: _keras(path="vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5", md5="cbe5617147190e668d6c5d5026f83318",
               top1=71.3, spec="caffe"),
}
_KERAS_INCEPTION = _keras(path="inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                          md5="9a0d58056eeedaa3f26cb7ebd46da564", top1=77.9, spec="tf")


def _vgg_arch(depth: int, batch_norm: bool) -> str:
    return f"vgg{depth}" + ("_bn" if batch_norm else "")


def _resnet(depth: int, *, source: str, weights_files: tuple[WeightsFile, ...], head_key: str,
            variant: str = "torchvision", torch_stages: tuple = ()) -> ModelConfig:
    return ModelConfig(arch=f"resnet{depth}", source=source, family_spec=RESNET,
                       kwargs=(("depth", depth), ("variant", variant)), weights_files=weights_files,
                       head_key=head_key, torch_stages=torch_stages)


def _vgg(depth: int, batch_norm: bool, *, source: str, weights_files: tuple[WeightsFile, ...], head_key: str,
         variant: str = "torchvision", torch_stages: tuple = ()) -> ModelConfig:
    return ModelConfig(arch=_vgg_arch(depth, batch_norm), source=source, family_spec=VGG,
                       kwargs=(("batch_norm", batch_norm), ("depth", depth), ("variant", variant)),
                       weights_files=weights_files, head_key=head_key, torch_stages=torch_stages)


def _timm_config(arch: str, *, family: Family, kwargs: tuple, torch_stages: tuple = ()) -> ModelConfig:
    """timm's tags of ``arch``; its classifier module (the same for every tag) names the head key."""
    tags = tuple(t for t in TIMM_TAGS if t.architecture == arch)
    return ModelConfig(arch=arch, source="timm", family_spec=family, kwargs=kwargs,
                       weights_files=tuple(map(_timm, tags)), head_key=f"{tags[0].classifier}.bias",
                       torch_stages=torch_stages)


_CONFIGS: list[ModelConfig] = [
    *(_resnet(d, source="torchvision", weights_files=files, head_key="fc.bias", torch_stages=_RESNET_TORCH)
      for d, files in _TORCHVISION_RESNET.items()),
    *(_resnet(d, source="keras", variant="keras", weights_files=(w,), head_key="predictions/bias")
      for d, w in _KERAS_RESNET.items()),
    *(_vgg(d, bn, source="torchvision", weights_files=(_TORCHVISION_VGG[_vgg_arch(d, bn)],),
           head_key="classifier.6.bias", torch_stages=_vgg_torch(d, bn))
      for d in _VGG_DEPTHS for bn in (False, True)),
    *(_vgg(d, False, source="keras", variant="keras", weights_files=(w,), head_key="predictions/bias")
      for d, w in _KERAS_VGG.items()),
    ModelConfig(arch="inception_v3", source="torchvision", family_spec=INCEPTION, kwargs=(("variant", "torchvision"),),
                weights_files=(_TORCHVISION_INCEPTION,), head_key="fc.bias", torch_stages=_INCEPTION_TORCH),
    ModelConfig(arch="inception_v3", source="keras", family_spec=INCEPTION, kwargs=(("variant", "keras"),),
                weights_files=(_KERAS_INCEPTION,), head_key="predictions/bias"),
    # timm: ResNet-B and VGG are torchvision's architectures (timm keeps fc6/fc7 as convolutions);
    # its Inception-v3 is torchvision's without the input re-normalisation step.
    *(_timm_config(f"resnet{d}", family=RESNET, kwargs=(("depth", d), ("variant", "torchvision")),
                   torch_stages=_RESNET_TORCH) for d in _RESNET_DEPTHS),
    *(_timm_config(_vgg_arch(d, bn), family=VGG, kwargs=(("batch_norm", bn), ("depth", d), ("variant", "torchvision")))
      for d in _VGG_DEPTHS for bn in (False, True)),
    _timm_config("inception_v3", family=INCEPTION, kwargs=(("variant", "torchvision"), ("transform_input", False)),
                 torch_stages=_INCEPTION_TORCH),
    # transformers' ResNetForImageClassification (microsoft/resnet-*): v1.5, other key names.
    *(_resnet(d, source="hf", weights_files=(_hf(d),), head_key="classifier.1.bias") for d in _RESNET_DEPTHS),
]
_REGISTRY = {(c.arch, c.source): c for c in _CONFIGS}

# Keras spells its applications in CamelCase; accept those names too.
_ALIASES = {"VGG16": "vgg16", "VGG19": "vgg19", "ResNet50": "resnet50", "ResNet101": "resnet101",
            "ResNet152": "resnet152", "InceptionV3": "inception_v3"}


def available() -> list[tuple[str, str]]:
    """Every supported (arch, source) pair."""
    return sorted(_REGISTRY)


def model_config(arch: str, source: str = "torchvision") -> ModelConfig:
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
    return model_config(arch, source).build(**kwargs)
