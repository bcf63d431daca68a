"""Flax variables -> a Keras 3 ``.weights.h5`` that ``keras.applications.X(weights=None, classes=N)`` loads.

Keras itself writes the file: the exporter builds the application with random weights, fills every
weight from our variables and calls ``save_weights``. Writing Keras' HDF5 layout by hand would
copy its private format (layer paths such as ``layers/conv2d_5/vars/0``) and break with it; the
library that reads the file is the reference. Which of our variables fills a Keras weight is
decided by the converter's own table: the weight's name (``conv3_block2_1_bn/gamma``) goes through
``keras_canonical_names`` and ``keras_rules`` forward to one of our paths, and the value flows back
through the inverse transform. Strict both ways: every Keras weight filled, every variable used.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from tl_jax.models import registry
from tl_jax.weights import convert, inverse, maps
from tl_jax.weights.inverse import ExportError

KERAS_APPS = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "resnet101": "ResNet101",
              "resnet152": "ResNet152", "inception_v3": "InceptionV3"}


def build(arch: str, num_classes: int, input_size: int | None = None) -> Any:
    """``keras.applications.X(weights=None, classes=num_classes, classifier_activation=None)``."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    shape = None if input_size is None else (input_size, input_size, 3)
    return getattr(keras.applications, KERAS_APPS[arch])(weights=None, classes=num_classes,
                                                        classifier_activation=None, input_shape=shape)


def keras_input_size(model_cfg: registry.ModelConfig, variables: Mapping[str, Any]) -> int | None:
    """Keras' VGG fixes its input size through fc6 (flattened NHWC): read it back from fc6's rows."""
    if model_cfg.family != "vgg":
        return None
    rows = variables["params"]["classifier"]["fc6"]["kernel"].shape[0]
    return 32 * math.isqrt(rows // 512)


def fill(model: Any, model_cfg: registry.ModelConfig, variables: Mapping[str, Any]) -> None:
    """Set every weight of the Keras ``model`` from ``variables`` by the converter's table."""
    fam = maps.family(model_cfg.family)
    slots = {f"{layer.name}/{w.name}": w for layer in model.layers for w in layer.weights}
    canonical = fam.keras_canonical_names({name: name for name in slots})
    entries, unmatched = convert.apply_rules(canonical, fam.keras_rules(model_cfg))
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    used = {"/".join(p) for p in entries}
    missing = sorted(set(flat) - used)
    unfilled = list(unmatched) + [str(orig) for p, (_, orig) in entries.items() if "/".join(p) not in flat]
    if missing or unfilled:
        raise ExportError(f"{model_cfg.arch} to keras: variables without a Keras weight: {missing[:5]}; "
                          f"Keras weights without a variable: {unfilled[:5]}")
    transforms = {fn for _, _, fn in fam.keras_rules(model_cfg)}
    if transforms - {convert.copy}:
        raise ExportError(f"{model_cfg.arch} to keras: the table has transforms other than copy")
    for path, (_, orig) in entries.items():
        slot, value = slots[str(orig)], inverse.INVERSES[convert.copy](flat["/".join(path)])
        if tuple(slot.shape) != value.shape:
            raise ExportError(f"{model_cfg.arch} to keras: {'/'.join(path)} {value.shape} vs {orig} {tuple(slot.shape)}")
        slot.assign(value.astype(np.float32))


def write(arch: str, source: str, variables: Mapping[str, Any], num_classes: int, path: os.PathLike) -> None:
    model_cfg = registry.model_config(arch, source)
    model = build(model_cfg.arch, num_classes, keras_input_size(model_cfg, variables))
    fill(model, model_cfg, variables)
    # Keras insists on the suffix; the exporter's temporary name keeps it.
    model.save_weights(os.fspath(path), overwrite=True)
