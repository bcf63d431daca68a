"""Configs: loading with overrides, hints for misspelt fields, (de)serialising.

ml_collections is imported where a ConfigDict is made, so that scripts without configs (the
benchmarks) run where it is not installed. A run directory compares its config on restart
(``tl_jax.experiment.rundir``).
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
from typing import Any, Mapping

class ConfigError(ValueError):
    """A config (file, field or value) that no run can use: a usage error, reported in one line."""


def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A locked ``ConfigDict`` from a config file (``path`` or ``path:arg`` for ``get_config(arg)``).

    ``overrides`` maps dotted field names to values (``{"freeze.frozen_depth": 3}``); like
    ``--config.x=y`` on the command line, a misspelt field fails with a hint.
    """
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise ConfigError(f"no config file {file!r}")
    spec = importlib.util.spec_from_file_location(f"_tl_jax_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return override(config, overrides or {})


def override(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of ``config`` (a ``ConfigDict``) with dotted fields replaced (the copy stays locked)."""
    import ml_collections

    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"the config has no field {key!r}{field_hint(config, key)}")
        setattr(node, leaf, value)
    return config


def field_hint(config: Any, key: str) -> str:
    """``"; did you mean freeze.frozen_depth?"`` for a field that does not exist, searched over every
    field of the config (ml_collections only compares with the siblings of the misspelt one)."""
    fields = list(flatten(to_dict(config)))
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [f for f in fields if f.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, fields, n=3, cutoff=0.6) or [
        f for f in fields if difflib.get_close_matches(leaf, [f.rsplit(".", 1)[-1]], cutoff=0.8)]
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def has_field(config: Any, key: str) -> bool:
    """Whether the dotted field ``key`` exists in ``config``."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a ConfigDict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config)))


def from_dict(d: Mapping[str, Any]) -> Any:
    import ml_collections

    c = ml_collections.ConfigDict(dict(d))
    c.lock()
    return c


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"name": "sgd"}}`` -> ``{"optim.name": "sgd"}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
