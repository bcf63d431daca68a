"""Declarative weight name maps, one module per model family.

Each family module defines:
  torchvision_rules(info): rules ``(regex, target template, transform)`` over state_dict keys.
  keras_canonical_names(weights): renames ``{"<layer>/<role>": array}`` where Keras names
    are not stable across generations (identity for most families).
  keras_rules(info): rules over the canonical Keras names.
"""
from __future__ import annotations

import importlib
from types import ModuleType


def family(name: str) -> ModuleType:
    return importlib.import_module(f"tl_jax.weights.maps.{name}")
