"""``keras.applications`` legacy HDF5 weight files -> Flax variables.

Read with h5py alone (no Keras, no TensorFlow): the root attribute ``layer_names``
orders the layers and each layer's ``weight_names`` orders its arrays. Array names
differ between Keras generations (``block1_conv1_W_1:0`` vs ``block1_conv1/kernel``),
so roles are given by position: conv/dense ``kernel, bias``; BatchNorm ``gamma,
beta, moving_mean, moving_variance`` (no gamma when it was built with ``scale=False``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights import convert, maps


def _decode(names: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _roles(arrays: list[np.ndarray]) -> list[str]:
    if all(a.ndim == 1 for a in arrays) and len(arrays) in (3, 4):
        return ["gamma", "beta", "moving_mean", "moving_variance"][4 - len(arrays):]
    if arrays and arrays[0].ndim in (2, 4) and len(arrays) <= 2:
        return ["kernel", "bias"][:len(arrays)]
    return [f"w{i}" for i in range(len(arrays))]


def read_h5_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{"<layer>/<role>": array}`` in file order, for every layer that holds weights."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise convert.ConversionError(f"{path} is not a readable HDF5 file ({e})") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model saves nest the weights
        if "layer_names" not in root.attrs:
            raise convert.ConversionError(f"{path} is HDF5 but not a Keras weights file "
                                          "(no 'layer_names' attribute)")
        out: dict[str, np.ndarray] = {}
        for layer in _decode(root.attrs["layer_names"]):
            g = root[layer]
            try:
                arrays = [np.asarray(g[w][()]) for w in _decode(g.attrs["weight_names"])]
            except (KeyError, OSError) as e:
                raise convert.ConversionError(f"{path}: layer {layer!r} is incomplete ({e})") from e
            for role, a in zip(_roles(arrays), arrays):
                out[f"{layer}/{role}"] = a
        return out


def convert_keras(arch: str, source: str | os.PathLike, model: Any = None) -> dict[str, Any]:
    """A Keras application's ``.h5`` weights -> ``{"params", "batch_stats"}`` for ``arch``."""
    info = registry.info(arch, "keras")
    fam = maps.family(info.family)
    raw = read_h5_weights(source)
    if model is None:
        head = raw.get(info.head_key)
        model = info.build(num_classes=int(head.shape[0]) if head is not None else None)  # a _notop file
    weights = fam.keras_canonical_names(raw)
    entries, unmatched = convert.apply_rules(weights, fam.keras_rules(info))
    return convert.assemble(variables_template(model, info.input_size), entries, unmatched,
                            what=f"Keras weights for {arch}")
