"""Variables of a model without running it: their shapes, and random values drawn on the host.

Compiling a model's initialiser costs seconds to tens of seconds on a small CPU (VGG's fc6 alone
holds 100M weights), and converters, the weights store, restoring a run and the benchmark only
need the shapes or values with the initialisers' distributions.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.tree import path_str


def variables_template(model: Any, input_size: int) -> dict[str, Any]:
    """Shapes of ``model``'s variables, without allocating or computing anything."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, getattr(model, "in_channels", 3)), jnp.float32)
    return dict(jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x))


def init_variables(model: Any, size: int, seed: int = 0) -> dict[str, Any]:
    """Random variables with Flax's default initialisers, drawn on the host with numpy.

    Same distributions as ``model.init`` (LeCun-normal truncated kernels, zero biases, unit
    BatchNorm scale and variance, zero means) without compiling the initialiser. ``seed`` makes
    it deterministic.
    """
    rng = np.random.default_rng(seed)
    fills = {"bias": np.zeros, "mean": np.zeros, "scale": np.ones, "var": np.ones}

    def fill(path, x):
        name = path_str(path).rsplit("/", 1)[-1]
        if name == "kernel":  # variance_scaling(1, "fan_in", "truncated_normal"): redraw beyond 2 sigma
            z = rng.standard_normal(x.shape)
            flat = z.reshape(-1)
            bad = np.flatnonzero(np.abs(flat) > 2)
            while bad.size:   # only the redrawn entries can be out of range again: check those alone
                flat[bad] = rng.standard_normal(bad.size)
                bad = bad[np.abs(flat[bad]) > 2]
            std = math.sqrt(1.0 / int(np.prod(x.shape[:-1]))) / 0.87962566103423978
            return (z * std).astype(x.dtype)
        if name not in fills:
            raise ValueError(f"init_variables: no initialiser for {path_str(path)!r}")
        return fills[name](x.shape, x.dtype)
    return jax.tree_util.tree_map_with_path(fill, variables_template(model, size))
