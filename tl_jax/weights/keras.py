"""``keras.applications`` weight files -> Flax variables, read with h5py alone (no Keras, no TensorFlow).

Three layouts:

* legacy HDF5 (the published files, ``save_weights(".h5")`` in Keras 2): the root attribute
  ``layer_names`` orders the layers and each layer's ``weight_names`` orders its arrays;
* Keras 3 ``.weights.h5``: ``layers/<class>[_k]/vars/<i>``, where ``k`` counts layers of one class
  in ``model.layers`` order, *not* the layer's name (InceptionV3's ``conv2d_5`` group can hold the
  layer named ``conv2d_8``), so the name comes from the ``name`` attribute Keras writes on each
  ``vars`` group, or from the ``.keras`` archive's ``config.json``; nested models (a backbone inside
  a Sequential) nest ``layers/<model>/layers/...``;
* Keras 3 ``.keras``: a zip holding ``config.json`` and ``model.weights.h5``.

Array names differ between Keras generations, so roles are given by position: conv/dense
``kernel, bias``; BatchNorm ``gamma, beta, moving_mean, moving_variance`` (no gamma when it was
built with ``scale=False``).
"""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import Any

import numpy as np
from flax import traverse_util

from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.weights import checks, convert, maps


def _decode(names: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _read(dataset: Any) -> np.ndarray:
    """A dataset's values; a float type other than IEEE half, single or double (what Keras writes) is
    refused: HDF5 converts any declared layout, so a damaged type header would yield garbage."""
    import h5py

    kind = dataset.id.get_type()
    if isinstance(kind, h5py.h5t.TypeFloatID) and not any(kind.equal(getattr(h5py.h5t, f"IEEE_F{bits}{order}"))
                                                          for bits in (16, 32, 64) for order in ("LE", "BE")):
        raise ValueError(f"stored as a non-IEEE {kind.get_size()}-byte float type (a damaged type header)")
    return np.asarray(dataset[()])


def _roles(arrays: list[np.ndarray]) -> list[str]:
    if all(a.ndim == 1 for a in arrays) and len(arrays) in (3, 4):
        return ["gamma", "beta", "moving_mean", "moving_variance"][4 - len(arrays):]
    if arrays and arrays[0].ndim in (2, 4) and len(arrays) <= 2:
        return ["kernel", "bias"][:len(arrays)]
    return [f"w{i}" for i in range(len(arrays))]


def _add(out: dict[str, np.ndarray], layer: str, arrays: list[np.ndarray], where: str) -> None:
    for role, a in zip(_roles(arrays), arrays):
        key = f"{layer}/{role}"
        if key in out:
            raise convert.ConversionError(f"{where}: two layers are named {layer!r}")
        out[key] = a


def _legacy(root: Any, where: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for layer in _decode(root.attrs["layer_names"]):
        try:
            g = root[layer]
            arrays = [_read(g[w]) for w in _decode(g.attrs["weight_names"])]
        except Exception as e:  # h5py raises KeyError, OSError, ValueError ... for damaged groups
            raise convert.ConversionError(f"{where}: layer {convert.show(layer)} is incomplete or damaged "
                                          f"({checks.describe(e)})") from e
        _add(out, layer, arrays, where)
    return out


def _snake(name: str) -> str:
    """Keras 3's group name for a layer class: ``BatchNormalization`` -> ``batch_normalization``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _config_names(config: dict[str, Any]) -> dict[str, Any]:
    """``{group name: layer name or nested dict}`` from a ``.keras`` config, in ``model.layers`` order."""
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for layer in config.get("config", {}).get("layers", []):
        base = _snake(layer["class_name"])
        k = counts.get(base, 0)
        counts[base] = k + 1
        group = base if k == 0 else f"{base}_{k}"
        nested = layer.get("config", {}).get("layers")
        out[group] = _config_names(layer) if nested is not None else layer.get("config", {}).get("name", group)
    return out


def _keras3(root: Any, where: str, names: dict[str, Any] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def walk(group: Any, names: dict[str, Any] | None) -> None:
        for key in group["layers"]:
            g = group["layers"][key]
            sub = (names or {}).get(key)
            if "layers" in g:  # a nested model: its own layers, by their own names
                walk(g, sub if isinstance(sub, dict) else None)
            if "vars" not in g or len(g["vars"]) == 0:
                continue
            name = g["vars"].attrs.get("name")
            name = name.decode("utf8") if isinstance(name, bytes) else name
            if name is None:
                if not isinstance(sub, str):
                    raise convert.ConversionError(
                        f"{where}: the weights group {g.name!r} carries no layer name (a Keras 3 file older than "
                        "the 'name' attribute): convert the model's .keras file instead, which has its config")
                name = sub
            try:
                arrays = [_read(g["vars"][str(i)]) for i in range(len(g["vars"]))]
            except Exception as e:  # h5py raises KeyError, OSError, ValueError ... for damaged groups
                raise convert.ConversionError(f"{where}: layer {convert.show(str(name))} is incomplete or damaged "
                                              f"({checks.describe(e)})") from e
            _add(out, name, arrays, where)

    walk(root, names)
    return out


def read_h5_weights(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """``{"<layer>/<role>": array}`` in file order, for every layer that holds weights, any layout.

    HDF5 has no checksum over its data: a damaged value is read as it is, and refused only when it
    is NaN or infinite (unless ``allow_nonfinite``). Any other damage is one ConversionError naming
    the file (and the layer, when one is being read).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    names = None
    if zipfile.is_zipfile(path):
        checks.verify_zip(path)  # every entry's CRC-32, not only those read below
        try:
            with zipfile.ZipFile(path) as z:
                data = z.read("model.weights.h5")
                config = json.loads(z.read("config.json")) if "config.json" in z.namelist() else None
        except Exception as e:  # a missing entry, a bad CRC-32, bad JSON ...
            raise convert.ConversionError(f"{path} is a zip but not a readable .keras archive "
                                          f"({checks.describe(e)})") from e
        try:
            names = _config_names(config) if config else None
        except Exception as e:  # noqa: BLE001 - any malformed config
            raise convert.ConversionError(f"{path}: config.json does not describe Keras layers "
                                          f"({checks.describe(e)})") from e
        source: Any = io.BytesIO(data)
    else:
        source = path
    try:
        f = h5py.File(source, "r")
    except Exception as e:  # OSError for most damage; h5py can raise others
        raise convert.ConversionError(f"{path} is not a readable HDF5 file ({checks.describe(e)})") from e
    try:
        with f:
            arrays = _read_layout(f, path, names)
    except convert.ConversionError:
        raise
    except Exception as e:  # damaged metadata: names that do not decode, missing groups, ...
        raise convert.ConversionError(f"{path} is a damaged Keras weights file ({checks.describe(e)})") from e
    checks.check_float(arrays, path)
    if not allow_nonfinite:
        checks.check_finite(arrays, path)
    return arrays


def _read_layout(f: Any, path: str, names: dict[str, Any] | None) -> dict[str, np.ndarray]:
    if "layers" in f and "layer_names" not in f.attrs:
        return _keras3(f, path, names)
    root = f["model_weights"] if "model_weights" in f else f  # full-model saves nest the weights
    if "layer_names" not in root.attrs:
        raise convert.ConversionError(f"{path} is HDF5 but not a Keras weights file "
                                      "(neither a legacy 'layer_names' attribute nor Keras 3 'layers/')")
    return _legacy(root, path)


def _model_for(model_cfg: registry.ModelConfig, weights: dict[str, np.ndarray], with_head: bool) -> Any:
    """The Flax model these weights fill: their head's class count (none for a _notop / include_top=False
    file, or without ``with_head``); VGG without fc6/fc7 as its conv backbone."""
    head = weights.get("head/bias") if with_head else None
    kwargs: dict[str, Any] = {"num_classes": int(head.shape[0]) if head is not None else None}
    if model_cfg.family == "vgg" and not any(k.startswith("classifier/") for k in weights):
        kwargs["include_classifier"] = False
    return model_cfg.build(**kwargs)


def convert_keras(arch: str, source: str | os.PathLike, model: Any = None, *,
                  allow_nonfinite: bool = False) -> dict[str, Any]:
    """A Keras application's weights file (legacy ``.h5``, ``.weights.h5``, ``.keras``) -> variables."""
    model_cfg = registry.model_config(arch, "keras")
    fam = maps.family(model_cfg.family)
    weights = fam.keras_canonical_names(read_h5_weights(source, allow_nonfinite=allow_nonfinite))
    model = model or _model_for(model_cfg, weights, with_head=True)
    entries, unmatched = convert.apply_rules(weights, fam.keras_rules(model_cfg))
    return convert.assemble(variables_template(model, model_cfg.input_size), entries, unmatched,
                            what=f"Keras weights for {arch}")


def convert_keras_backbone(arch: str, source: str | os.PathLike, *,
                           allow_nonfinite: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The ``keras.applications`` backbone inside a user's model (``include_top=False`` + own layers).

    Returns the backbone's variables (no head) and the layers that were ignored (the user's
    own, and a head if any). Every backbone weight must still be present.
    """
    model_cfg = registry.model_config(arch, "keras")
    fam = maps.family(model_cfg.family)
    weights = fam.keras_canonical_names(read_h5_weights(source, allow_nonfinite=allow_nonfinite))
    model = _model_for(model_cfg, weights, with_head=False)
    template = variables_template(model, model_cfg.input_size)
    entries, unmatched = convert.apply_rules(weights, fam.keras_rules(model_cfg))
    flat = set(traverse_util.flatten_dict(dict(template)))
    ignored = sorted({name.rsplit("/", 1)[0] for name in unmatched}
                     | {src.rsplit("/", 1)[0] for path, (src, _) in entries.items() if path not in flat})
    kept = {path: entry for path, entry in entries.items() if path in flat}
    return convert.assemble(template, kept, (), what=f"Keras {arch} backbone"), ignored

