"""Per-source input preprocessing, as one declarative table.

Converted weights only reproduce their source when the input is prepared the way
the source was trained: torchvision scales RGB to [0, 1] and standardises, Keras'
"caffe" mode flips to BGR and subtracts the ImageNet mean without scaling, Keras'
"tf" mode maps to [-1, 1]. The registry names a key of :data:`SPECS` for every
(arch, source); ``metadata.json`` of converted weights stores the full spec.

Evaluation geometry is torchvision's: resize the shorter side to ``resize_size``
(antialiased, with the spec's ``interpolation``) and center-crop ``crop_size``. timm states
its evaluation as ``crop_pct``; :func:`timm_spec` turns that into the same two sizes
(``resize = floor(crop / crop_pct)``, timm's rule). Keras publishes no resize for
its applications; we use the same crop ratio 0.875 as torchvision (224/256), so
Keras InceptionV3 gets ``round(299 / 0.875) = 342``, the size torchvision uses for
its own Inception-v3.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """``out = (x[..., channel_order] / divisor - mean) / std`` on 0..255 RGB input.

    ``mean`` and ``std`` are given in the output channel order (BGR for "caffe").
    """
    name: str
    channel_order: str            # "RGB" or "BGR": the channel order the model expects
    divisor: float                # 255.0: [0, 1]; 127.5: [0, 2]; 1.0: raw 0..255
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int              # shorter side before the center crop (evaluation)
    crop_size: int                # the model's input size
    interpolation: str = "bilinear"   # of the evaluation resize: "bilinear" or "bicubic" (PIL's filters)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPECS: dict[str, PreprocessSpec] = {s.name: s for s in (
    PreprocessSpec("torchvision", "RGB", 255.0, IMAGENET_MEAN, IMAGENET_STD, 256, 224),
    # torchvision's IMAGENET1K_V2 recipe weights are evaluated at resize 232 / crop 224.
    PreprocessSpec("torchvision_v2", "RGB", 255.0, IMAGENET_MEAN, IMAGENET_STD, 232, 224),
    PreprocessSpec("torchvision_inception", "RGB", 255.0, IMAGENET_MEAN, IMAGENET_STD, 342, 299),
    PreprocessSpec("caffe", "BGR", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), 256, 224),
    PreprocessSpec("tf", "RGB", 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 342, 299),
)}


INTERPOLATIONS = ("bilinear", "bicubic")


def timm_spec(name: str, crop_size: int, crop_pct: float, interpolation: str,
              mean: tuple[float, float, float] = IMAGENET_MEAN,
              std: tuple[float, float, float] = IMAGENET_STD) -> PreprocessSpec:
    """A timm / Hugging Face ``pretrained_cfg`` (RGB in [0, 1], then mean/std) as a spec."""
    return PreprocessSpec(name, "RGB", 255.0, tuple(mean), tuple(std), int(math.floor(crop_size / crop_pct)),
                          int(crop_size), interpolation)


def get_spec(spec: str | PreprocessSpec | Mapping[str, Any]) -> PreprocessSpec:
    """A spec from its name, itself, or its dict form (as stored in metadata.json)."""
    if isinstance(spec, PreprocessSpec):
        return spec
    if isinstance(spec, str):
        if spec not in SPECS:
            raise ValueError(f"unknown preprocessing {spec!r}; choose one of {', '.join(SPECS)}")
        return SPECS[spec]
    fields = {f.name for f in dataclasses.fields(PreprocessSpec)}
    missing = fields - set(spec) - {"interpolation"}  # stores written before it existed are bilinear
    if missing:
        raise ValueError(f"preprocessing spec lacks fields {sorted(missing)}: {dict(spec)}")
    kw = {k: spec[k] for k in fields if k in spec}
    kw["mean"], kw["std"] = tuple(map(float, kw["mean"])), tuple(map(float, kw["std"]))
    if kw["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {kw['channel_order']!r}")
    if kw.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {kw['interpolation']!r}")
    return PreprocessSpec(**kw)


def spec_from_metadata(metadata: Mapping[str, Any]) -> PreprocessSpec:
    """The spec stored in converted weights' ``metadata.json`` (a dict or a SPECS name)."""
    if "preprocessing" not in metadata:
        raise ValueError("metadata has no 'preprocessing' entry")
    return get_spec(metadata["preprocessing"])


def normalize(images: Any, spec: str | PreprocessSpec | Mapping[str, Any]) -> Any:
    """0..255 RGB ``(..., H, W, 3)`` images (uint8 or float) -> float32 model input.

    Works on numpy and on jax arrays (only array methods and operators are used), so
    it can run inside a jitted input pipeline.
    """
    s = get_spec(spec)
    if images.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {tuple(images.shape)}")
    x = images.astype(np.float32)
    if s.channel_order == "BGR":
        x = x[..., ::-1]
    x = x / np.float32(s.divisor)
    return (x - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``resize``: torchvision ``Resize(int)``'s rule."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def to_rgb(image: Any) -> Any:
    """A PIL image as 8-bit RGB, the layout TensorFlow's decoder gives training (``tf_ops.decode``).

    Palettes are expanded, alpha is dropped (not composited over a background), gray is repeated,
    CMYK converted (the same pixels as TensorFlow), 16-bit samples keep their high byte (PIL's own
    ``convert("RGB")`` clips 16-bit gray at 255). EXIF orientation is not applied, as neither
    torchvision's loader nor TensorFlow applies it.
    """
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit PNG gray
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return image.convert("RGB")


def resize_and_center_crop(image: Any, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """``Resize(resize)`` (shorter side, antialiased) + ``CenterCrop(crop)``.

    Takes a PIL image (or an HWC uint8 array) and returns the RGB crop as a uint8
    ``(crop, crop, 3)`` array. Matches torchvision.transforms (and timm's eval
    transform) on PIL images, which resize with PIL's antialiased filters.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image = to_rgb(image)
    size = resized_size(*image.size, resize)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR)
    w, h = image.size
    if crop > w or crop > h:
        raise ValueError(f"crop {crop} is larger than the resized image {w}x{h}")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return np.asarray(image.crop((left, top, left + crop, top + crop)), np.uint8)


def prepare(image: Any, spec: str | PreprocessSpec | Mapping[str, Any]) -> np.ndarray:
    """One image -> the evaluation input ``(crop, crop, 3)`` float32 for ``spec``."""
    s = get_spec(spec)
    return normalize(resize_and_center_crop(image, s.resize_size, s.crop_size, s.interpolation), s)
