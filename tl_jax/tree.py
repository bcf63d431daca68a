"""Pytree helpers every layer uses: '/'-joined leaf paths, the names freezing and weight maps speak."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np


def path_str(path: Sequence[Any]) -> str:
    """'/'-joined key path of a pytree leaf (dict keys, attribute names or indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(tree: Any) -> list[str]:
    """The '/'-paths of every leaf, in tree order (``layer1/block0/conv1/kernel``)."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flat(tree: Any) -> dict[str, np.ndarray]:
    """``{path: numpy array}`` of every leaf, fetched to the host."""
    return {path_str(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def num_bytes(tree: Any) -> int:
    """Total bytes of the array leaves (e.g. of an optimizer state)."""
    return int(sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))
