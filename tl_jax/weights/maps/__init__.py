"""Declarative weight name maps, one module per model family.

Each family module defines:
  torchvision_rules(model_cfg): rules ``(regex, target template, transform)`` over state_dict keys.
  keras_canonical_names(weights): renames ``{"<layer>/<role>": array}`` where Keras names
    are not stable across generations (identity for most families).
  keras_rules(model_cfg): rules over the canonical Keras names.

The layer kinds every family shares (torch's BatchNorm leaves, Keras' weight roles, a torch layer's
``weight`` + ``bias``) are written here once, so the families' tables and their inverses
(``tl_jax.weights.inverse``) cannot disagree on them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from tl_jax.weights.convert import Rule, Transform, copy

# torch BatchNorm's state_dict leaves -> (Flax collection, leaf of our BatchNorm).
TORCH_BN = (("weight", "params", "scale"), ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))
# torch BatchNorm's step counter: Flax keeps none, so it is dropped.
TORCH_BN_COUNTER: Rule = (r".*num_batches_tracked", "", None)
# Keras' weight roles (the ``<role>`` of ``<layer>/<role>``) -> (Flax collection, leaf).
KERAS_ROLES = {"kernel": ("params", "kernel"), "bias": ("params", "bias"), "gamma": ("params", "scale"),
               "beta": ("params", "bias"), "moving_mean": ("batch_stats", "mean"),
               "moving_variance": ("batch_stats", "var")}


def family(name: str) -> ModuleType:
    return importlib.import_module(f"tl_jax.weights.maps.{name}")


def torch_bn(src: str, dst: str) -> list[Rule]:
    """The torch BatchNorm at ``src`` (a key regex, may hold groups) -> our BatchNorm at ``dst``."""
    return [(rf"{src}\.{leaf}", f"{col}/{dst}/{ours}", copy) for leaf, col, ours in TORCH_BN]


def weight_bias(src: str, dst: str, weight: Transform) -> list[Rule]:
    """The torch layer at ``src``: ``weight`` -> ``params/<dst>/kernel`` through ``weight``; ``bias`` copied."""
    return [(rf"{src}\.weight", f"params/{dst}/kernel", weight), (rf"{src}\.bias", f"params/{dst}/bias", copy)]


def keras_roles(*roles: str) -> list[Rule]:
    """``<layer>/<role>`` -> ``<collection>/<layer>/<leaf>`` for ``roles`` (default: every Keras role)."""
    return [(rf"(.*)/{role}", rf"{col}/\1/{leaf}", copy)
            for role, (col, leaf) in KERAS_ROLES.items() if not roles or role in roles]
