"""Data, weights and model from a config: datasets, model and variables, freeze spec, optimizer settings."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from tl_jax.experiment.config import override


# --------------------------------------------------------------------------- data
def data_options(config: Any, role: str = "train") -> dict[str, Any]:
    """Source-specific options of ``make_dataset`` from ``config.data``, for the ``"train"`` or ``"eval"`` split.

    ``labels_per_class`` subsamples the training split only: evaluation uses every example.
    """
    d = config.data
    kind = d.source.partition(":")[0]
    if kind == "tfds":
        return {"data_dir": d.data_dir} if d.data_dir else {}
    if kind == "folder":
        return {"skip_corrupt": bool(d.skip_corrupt)}
    if d.source == "synthetic":
        opts = {"num_classes": int(d.num_classes or 10), "data_seed": 0}
        return {**opts, "num_examples": int(d.num_examples)} if d.num_examples else opts
    if d.source == "digits":
        opts: dict[str, Any] = {}
        if d.classes:
            opts["classes"] = tuple(int(c) for c in d.classes)
        if d.labels_per_class and role == "train":
            opts["labels_per_class"] = int(d.labels_per_class)
        return opts
    return {}


def image_size(config: Any, metadata: Mapping[str, Any]) -> int:
    return int(config.data.image_size or metadata["input_size"])


def make_data(config: Any, metadata: Mapping[str, Any], split: str, *, train: bool, role: str | None = None,
              source: str | None = None, batch_size: int | None = None, prefetch: int = 2) -> Any:
    """One split as a ``tl_jax.data.Dataset`` prepared the way the weights expect.

    ``train``: the training transform (augmentation, endless epochs) or one exact eval pass;
    ``role`` (default: ``"train"`` when ``train``): which split's source options apply.
    """
    from tl_jax.data import make_dataset

    if source is not None and source != config.data.source:
        config = override(config, {"data.source": source})
    return make_dataset(config.data.source, split, batch_size=int(batch_size or config.batch_size), train=train,
                        preprocessing=metadata["preprocessing"], image_size=image_size(config, metadata),
                        resize_size=int(config.data.resize_size) or None,
                        scale=(float(config.data.min_crop_area), 1.0), seed=int(config.seed), prefetch=prefetch,
                        **data_options(config, role or ("train" if train else "eval")))


# --------------------------------------------------------------------------- weights and model
def weights_metadata(config: Any) -> dict[str, Any]:
    """The weights' ``metadata.json``, or the registry's equivalent for a random initialisation."""
    from tl_jax.weights import store

    if config.weights:
        return store.read_metadata(config.weights)
    return store.build_metadata(config.model.arch, config.model.source, None, class_names=None)


def compute_dtype(config: Any) -> Any:
    import jax.numpy as jnp

    try:
        return jnp.dtype(config.model.dtype)
    except TypeError as e:
        raise ValueError(f"model.dtype {config.model.dtype!r} is not a dtype (use float32 or bfloat16)") from e


def init_variables(model: Any, size: int, seed: int = 0) -> dict[str, Any]:
    """Random variables with Flax's default initialisers, drawn on the host with numpy.

    Same distributions as ``model.init`` (LeCun-normal truncated kernels, zero biases, unit
    BatchNorm scale and variance, zero means) without compiling the initialiser, which takes
    about 15 s for a ResNet on a small CPU. ``seed`` makes it deterministic.
    """
    import jax

    from tl_jax.freeze import path_str
    from tl_jax.weights.convert import variables_template

    shapes = variables_template(model, size)
    rng = np.random.default_rng(seed)
    fills = {"bias": np.zeros, "mean": np.zeros, "scale": np.ones, "var": np.ones}

    def fill(path, x):
        name = path_str(path).rsplit("/", 1)[-1]
        if name == "kernel":  # variance_scaling(1, "fan_in", "truncated_normal"): redraw beyond 2 sigma
            z = rng.standard_normal(x.shape)
            while (bad := np.abs(z) > 2).any():
                z[bad] = rng.standard_normal(int(bad.sum()))
            std = math.sqrt(1.0 / int(np.prod(x.shape[:-1]))) / 0.87962566103423978
            return (z * std).astype(x.dtype)
        if name not in fills:
            raise ValueError(f"init_variables: no initialiser for {path_str(path)!r}")
        return fills[name](x.shape, x.dtype)
    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def build_model(config: Any, metadata: Mapping[str, Any], num_classes: int) -> tuple[Any, dict[str, Any]]:
    """(model, variables): the converted weights with a fresh ``num_classes`` head, or a random init."""
    from tl_jax.models import registry
    from tl_jax.weights.store import load_pretrained

    dtype = compute_dtype(config)
    if config.weights:
        model, variables, _ = load_pretrained(config.weights, num_classes, int(config.seed), dtype=dtype)
    else:
        model = registry.create(metadata["arch"], metadata["source"], num_classes=num_classes, dtype=dtype)
        variables = init_variables(model, image_size(config, metadata), int(config.seed))
    if config.model.head_init == "zeros":  # every class starts equally likely, whatever the feature scale
        head = {k: np.zeros_like(v) for k, v in variables["params"]["head"].items()}
        variables = {**variables, "params": {**variables["params"], "head": head}}
    return model, variables


def freeze_spec(config: Any, stage_names: Sequence[str]) -> Any:
    """``config.freeze`` as a ``FreezeSpec`` (``frozen_depth=-1``: every backbone stage, only the head trains)."""
    from tl_jax.freeze import FreezeSpec

    return FreezeSpec.from_config(config.freeze, stage_names)


def optim_config(config: Any, steps_per_epoch: int) -> Any:
    from tl_jax.optim import OptimConfig

    return OptimConfig.from_config(config.optim,
                                   warmup_steps=int(round(config.optim.warmup_epochs * steps_per_epoch)))


def num_steps(config: Any, steps_per_epoch: int) -> int:
    return int(config.num_steps) or max(1, int(round(config.num_epochs * steps_per_epoch)))
