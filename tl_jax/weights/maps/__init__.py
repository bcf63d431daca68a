"""Declarative weight name maps, one module per model family.

Each family module defines:
  TORCHVISION_HEAD: the state_dict key of the classifier bias (gives ``num_classes``).
  torchvision_rules(info): rules ``(regex, target template, transform)`` over state_dict keys.
  KERAS_HEAD: the canonical name of the Keras classifier bias.
  keras_canonical_names(weights): renames ``{"<layer>/<role>": array}`` where Keras names
    are not stable across generations (identity for most families).
  keras_rules(info): rules over the canonical Keras names.
"""
from __future__ import annotations

import importlib
from types import ModuleType


def family(name: str) -> ModuleType:
    return importlib.import_module(f"tl_jax.weights.maps.{name}")
