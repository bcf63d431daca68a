"""Configs: loading with overrides, (de)serialising, checking a restart and validating values.

Also the names of the files and folders of a run directory (see ``tl_jax.experiment``)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from typing import Any, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG, RUN, METRICS, RESULT = "config.json", "run.json", "metrics.jsonl", "result.json"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
HEAD_INITS = ("lecun", "zeros")
# Fields that may change when a run is restarted: they do not change what is trained.
RESTART_MUTABLE = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                   "data.data_dir", "data.skip_corrupt", "tensorboard")


# --------------------------------------------------------------------------- configs
def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A locked ``ConfigDict`` from a config file (``path`` or ``path:arg`` for ``get_config(arg)``).

    ``overrides`` maps dotted field names to values (``{"freeze.frozen_depth": 3}``); like
    ``--config.x=y`` on the command line, a misspelt field fails with a "did you mean" hint.
    Config files import ``from configs import default``, so the repository root goes on sys.path.
    """
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config file {file!r}")
    spec = importlib.util.spec_from_file_location(f"_tl_jax_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return override(config, overrides or {})


def override(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with dotted fields replaced (the copy stays locked: typos fail)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = getattr(node, p)
        if leaf not in node:
            getattr(node, leaf)  # raises AttributeError with ml_collections' "did you mean" hint
        setattr(node, leaf, value)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a ConfigDict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config)))


def config_from_dict(d: Mapping[str, Any]) -> Any:
    import ml_collections

    c = ml_collections.ConfigDict(dict(d))
    c.lock()
    return c


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_config(old: Mapping[str, Any], new: Mapping[str, Any], workdir: str) -> None:
    a, b = _flatten(old), _flatten(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESTART_MUTABLE)
    if diff:
        lines = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:8])
        raise ValueError(f"{workdir} holds a run with another config ({lines}); resuming it would mix two "
                         f"experiments. Use a new --workdir (or delete {os.path.join(workdir, CONFIG)} and "
                         f"{CHECKPOINTS}/ to start over).")


def validate(config: Any, stage_names: Sequence[str] | None = None) -> None:
    """Fail fast, before any data or weights are read, on values no run could use."""
    from tl_jax.data import SOURCES
    from tl_jax.experiment.build import compute_dtype, freeze_spec
    from tl_jax.optim import OptimConfig
    from tl_jax.parallel import KINDS

    OptimConfig.from_config(config.optim)  # unknown optimizer or schedule
    if config.model.head_init not in HEAD_INITS:
        raise ValueError(f"model.head_init {config.model.head_init!r} is not one of {HEAD_INITS}")
    compute_dtype(config)
    kind, _, arg = config.data.source.partition(":")
    if not ((kind in ("tfds", "folder") and arg) or config.data.source in ("synthetic", "digits")):
        raise ValueError(f"data.source {config.data.source!r} is not one of {', '.join(SOURCES)}")
    if config.parallel not in KINDS:
        raise ValueError(f"parallel {config.parallel!r} is not one of {KINDS}")
    checks = {"batch_size": config.batch_size >= 1, "feature_cache_views": config.feature_cache_views >= 1,
              "num_epochs or num_steps": config.num_epochs > 0 or config.num_steps > 0,
              "log_every_steps": config.log_every_steps >= 1,
              "checkpoint_every_steps": config.checkpoint_every_steps >= 0,
              "keep_checkpoints": config.keep_checkpoints >= 1,
              "data.min_crop_area": 0 < config.data.min_crop_area <= 1}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"config values out of range: {', '.join(bad)}")
    if not config.weights:
        from tl_jax.models import registry

        registry.info(config.model.arch, config.model.source)
    if stage_names is not None:
        freeze_spec(config, stage_names)
