"""What happens to one image, decided once: geometry, augmentation and normalisation.

Normalisation comes from the weights' preprocessing spec (:mod:`tl_jax.preprocess`), folded
into a per-channel ``x[..., order] * mul + add`` so that the TensorFlow and numpy paths apply
the very same arithmetic inside their own graphs.

The numpy/PIL path (in-memory sources: digits, synthetic) follows torchvision exactly:
``RandomResizedCrop`` parameters, PIL's antialiased bilinear resize, ``Resize`` + ``CenterCrop``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from tl_jax import preprocess


@dataclasses.dataclass(frozen=True)
class Transform:
    train: bool
    image_size: int                      # output side (the model's input size)
    resize_size: int                     # eval: shorter side before the center crop
    scale: tuple[float, float] = (0.08, 1.0)        # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)     # random-resized-crop aspect ratio
    flip: bool = True                    # random horizontal flip (train)
    antialias: bool = False              # antialiased resize of the training crop (eval always is)
    interpolation: str = "bilinear"      # eval resize filter, from the weights' spec (timm: often bicubic)
    bgr: bool = False                    # reverse RGB -> BGR before the affine
    mul: tuple[float, float, float] = (1.0, 1.0, 1.0)
    add: tuple[float, float, float] = (0.0, 0.0, 0.0)


def make_transform(preprocessing: str | Mapping[str, Any] | Any, *, train: bool, image_size: int | None = None,
                   resize_size: int | None = None, scale: tuple[float, float] = (0.08, 1.0),
                   ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                   antialias: bool = False) -> Transform:
    """A :class:`Transform` from a preprocessing spec (a ``SPECS`` name, a spec, or its dict).

    ``image_size`` defaults to the spec's ``crop_size``; the eval resize keeps the spec's
    crop ratio (256/224) unless ``resize_size`` is given.
    """
    spec = preprocess.get_spec(preprocessing)
    size = int(image_size or spec.crop_size)
    if resize_size is None:
        resize_size = spec.resize_size if size == spec.crop_size else \
            int(round(size * spec.resize_size / spec.crop_size))
    if resize_size < size:
        raise ValueError(f"resize_size {resize_size} is smaller than the crop {size}")
    lo, hi = map(float, scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    r0, r1 = map(float, ratio)
    if not 0.0 < r0 <= r1:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    std = np.asarray(spec.std, np.float64)
    mul = 1.0 / (spec.divisor * std)
    add = -np.asarray(spec.mean, np.float64) / std
    return Transform(train=train, image_size=size, resize_size=int(resize_size), scale=(lo, hi), ratio=(r0, r1),
                     flip=bool(flip), antialias=bool(antialias), interpolation=spec.interpolation,
                     bgr=spec.channel_order == "BGR",
                     mul=tuple(float(v) for v in mul), add=tuple(float(v) for v in add))


def normalize(images: np.ndarray, t: Transform) -> np.ndarray:
    """0..255 RGB ``(..., 3)`` -> float32 model input (the affine form of ``preprocess.normalize``)."""
    x = np.asarray(images, np.float32)
    if t.bgr:
        x = x[..., ::-1]
    return x * np.asarray(t.mul, np.float32) + np.asarray(t.add, np.float32)


def crop_params(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_array(image: np.ndarray, rng: np.random.Generator, t: Transform) -> np.ndarray:
    """uint8 HWC -> random-resized crop (PIL bilinear) -> random flip, as uint8 ``(size, size, 3)``."""
    from PIL import Image

    top, left, h, w = crop_params(image.shape[0], image.shape[1], rng, t.scale, t.ratio)
    crop = Image.fromarray(image[top:top + h, left:left + w])
    out = np.asarray(crop.resize((t.image_size, t.image_size), Image.BILINEAR))
    if t.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def eval_array(image: np.ndarray, t: Transform) -> np.ndarray:
    """uint8 HWC -> torchvision ``Resize(resize_size)`` + ``CenterCrop(image_size)``."""
    if image.shape[0] == image.shape[1] == t.resize_size == t.image_size:
        return image
    return preprocess.resize_and_center_crop(image, t.resize_size, t.image_size, t.interpolation)
