"""A config, validated, becomes one :class:`Experiment`: the ``loop.Setup`` hand-off plus the run's facts.

Data flows weights -> model -> freeze spec -> optimizer -> data -> ``loop.Setup``; nothing is
read before ``validate`` has accepted every value, so a wrong value costs seconds, not a run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from tl_jax import loop
from tl_jax.data import SOURCES, Dataset, UnreadableImagesError, make_dataset
from tl_jax.experiment.config import ConfigError, override
from tl_jax.freeze import FreezeSpec
from tl_jax.models import registry
from tl_jax.models.init import init_variables
from tl_jax.models.reinit import reinit_stages
from tl_jax.optim import OptimConfig
from tl_jax.parallel import KINDS, DataParallel
from tl_jax.weights import store

HEAD_INITS = ("lecun", "zeros")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What ``prepare`` builds: ``setup`` goes to ``loop.fit``; ``info`` is written as ``run.json``."""
    config: Any
    setup: loop.Setup
    info: dict[str, Any]            # arch, source, stages, preprocessing, sizes, classes, steps, parameter counts
    metadata: dict[str, Any]        # the weights' metadata.json (or the registry's for a random init)
    train_data: Dataset
    eval_data: Dataset | None


def prepare(config: Any) -> Experiment:
    """Validate ``config`` and build everything a run needs, in one pass."""
    validate(config)
    metadata = weights_metadata(config)
    spec = _checked(lambda: FreezeSpec.from_config(config.freeze, metadata["stage_names"]))
    train_data = make_data(config, metadata, config.data.train_split, train=True)
    eval_data = make_data(config, metadata, config.data.eval_split, train=False,
                          batch_size=int(config.eval_batch_size) or None) if config.data.eval_split else None
    classes = train_data.num_classes
    if config.data.num_classes and config.data.num_classes != classes:
        raise ConfigError(f"data.num_classes={config.data.num_classes} but {config.data.source} "
                          f"{config.data.train_split!r} has {classes} classes")
    if eval_data is not None and eval_data.num_classes != classes:
        raise ValueError(f"the eval split {config.data.eval_split!r} has {eval_data.num_classes} classes, "
                         f"the train split {classes}")
    model, variables = build_model(config, metadata, classes)
    if str(config.freeze.reinit_from):
        variables = reinit_variables(config, metadata, model, variables)
    _checked(lambda: spec.check(variables["params"]))
    dp = DataParallel(config.parallel, sync_bn=bool(config.sync_bn))
    for field in ("batch_size", "eval_batch_size"):
        if int(config[field]) % dp.num_devices:
            raise ConfigError(f"{field} {config[field]} does not split over {dp.num_devices} devices")
    spe = train_data.steps_per_epoch
    optim = optim_config(config, spec, spe)
    total = int(config.num_steps) or max(1, int(round(config.num_epochs * spe)))
    cadence = loop.Cadence(log_every=int(config.log_every_steps),
                           eval_every=max(1, int(round(config.eval_every_epochs * spe))) if config.eval_every_epochs
                           else 0, checkpoint_every=int(config.checkpoint_every_steps),
                           keep_checkpoints=int(config.keep_checkpoints))
    setup = loop.Setup(model=model, variables=variables, freeze=spec, optim=optim, num_steps=total,
                       train_data=train_data.batches,
                       eval_data=(lambda: eval_data.batches(0)) if eval_data is not None else None,
                       parallel=dp, cadence=cadence, label_smoothing=float(config.label_smoothing),
                       seed=int(config.seed))
    info = {
        "arch": metadata["arch"], "source": metadata["source"], "stage_names": list(metadata["stage_names"]),
        "preprocessing": metadata["preprocessing"], "image_size": train_data.image_size,
        "num_classes": classes, "class_names": list(train_data.class_names),
        "weights": os.path.abspath(config.weights) if config.weights else "",
        "weights_tag": metadata.get("weights"), "model_kwargs": dict(metadata.get("model_kwargs") or {}),
        "frozen_depth": spec.prefix_depth, "frozen_stages": list(spec.frozen_stages),
        "freeze_phases": [{"start": p.start, "frozen_stages": list(p.frozen), "learning_rate": p.learning_rate}
                          for p in spec.phases] if spec.changes else None,
        "reinit_from": str(config.freeze.reinit_from) or None, "fold_frozen_bn": bool(config.model.fold_frozen_bn),
        "num_train_examples": train_data.num_examples,
        "num_eval_examples": eval_data.num_examples if eval_data is not None else 0,
        "batch_size": int(config.batch_size), "steps_per_epoch": spe, "num_steps": total,
        "warmup_steps": optim.warmup_steps, "dtype": str(config.model.dtype), **spec.summary(variables["params"]),
    }
    return Experiment(config, setup, info, metadata, train_data, eval_data)


def optim_config(config: Any, spec: FreezeSpec, steps_per_epoch: int) -> OptimConfig:
    """``config.optim`` resolved: the head-only peak learning rate where only the head trains, warmup in steps."""
    lr = config.optim.head_only_learning_rate if spec.head_only and config.optim.head_only_learning_rate > 0 \
        else config.optim.learning_rate
    return OptimConfig.from_config(config.optim, learning_rate=float(lr),
                                   warmup_steps=int(round(config.optim.warmup_epochs * steps_per_epoch)))


def data_seed(config: Any) -> int:
    """The seed of the training data's order, augmentation and label subset: ``data.seed``, or the run's
    ``seed`` where that is -1 (or absent, in configs written before the field existed)."""
    seed = int(config.data.get("seed", -1))
    return int(config.seed) if seed < 0 else seed


def validate(config: Any, stage_names: Sequence[str] | None = None) -> None:
    """Fail fast, before any data or weights are read, on values no run could use (``ConfigError``)."""
    _checked(lambda: OptimConfig.from_config(config.optim))
    if config.model.head_init not in HEAD_INITS:
        raise ConfigError(f"model.head_init {config.model.head_init!r} is not one of {HEAD_INITS}")
    compute_dtype(config)
    kind, _, arg = config.data.source.partition(":")
    if not ((kind in ("tfds", "folder") and arg) or config.data.source in ("synthetic", "digits", "glyphs")):
        raise ConfigError(f"data.source {config.data.source!r} is not one of {', '.join(SOURCES)}")
    if config.parallel not in KINDS:
        raise ConfigError(f"parallel {config.parallel!r} is not one of {', '.join(KINDS)}")
    checks = {"batch_size >= 1": config.batch_size >= 1, "eval_batch_size >= 0": config.eval_batch_size >= 0,
              "activation_cache_views >= 1": config.activation_cache_views >= 1,
              "activation_cache_max_gb > 0": config.activation_cache_max_gb > 0,
              "num_epochs or num_steps > 0": config.num_epochs > 0 or config.num_steps > 0,
              "log_every_steps >= 1": config.log_every_steps >= 1,
              "checkpoint_every_steps >= 0": config.checkpoint_every_steps >= 0,
              "keep_checkpoints >= 1": config.keep_checkpoints >= 1,
              "0 < data.min_crop_area <= 1": 0 < config.data.min_crop_area <= 1}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"config values out of range: need {', '.join(bad)}")
    if not config.weights:
        _checked(lambda: registry.model_config(config.model.arch, config.model.source))
    if stage_names is not None:
        _checked(lambda: FreezeSpec.from_config(config.freeze, stage_names))


def _checked(fn: Any) -> Any:
    """Run ``fn``; a ValueError it raises is a config error (the values came from the config)."""
    try:
        return fn()
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def compute_dtype(config: Any) -> Any:
    try:
        return jnp.dtype(config.model.dtype)
    except TypeError:
        raise ConfigError(f"model.dtype {config.model.dtype!r} is not a dtype (use float32 or bfloat16)") from None


# --------------------------------------------------------------------------- data
def data_options(config: Any, role: str = "train") -> dict[str, Any]:
    """Source-specific options of ``make_dataset`` from ``config.data`` for the ``"train"`` or ``"eval"`` split.

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
    opts = {}
    if d.classes:
        opts["classes"] = tuple(int(c) for c in d.classes)
    if d.labels_per_class and role == "train":
        opts["labels_per_class"] = int(d.labels_per_class)
        opts["label_seed"] = data_seed(config) if int(d.label_seed) < 0 else int(d.label_seed)
    if d.source == "glyphs" and d.num_examples:
        opts["num_examples"] = int(d.num_examples)
    if d.source == "glyphs" and int(d.glyph_grid) != 8:
        opts["grid"] = int(d.glyph_grid)
    if d.shift:
        opts["shift"] = str(d.shift)
    return opts


def image_size(config: Any, metadata: Mapping[str, Any]) -> int:
    return int(config.data.image_size or metadata["input_size"])


def make_data(config: Any, metadata: Mapping[str, Any], split: str, *, train: bool, role: str | None = None,
              source: str | None = None, batch_size: int | None = None) -> Dataset:
    """One split as a ``tl_jax.data.Dataset`` prepared the way the weights expect.

    ``train``: the training transform (augmentation, endless epochs) or one exact eval pass;
    ``role`` (default: ``"train"`` when ``train``): which split's source options apply.
    """
    if source is not None and source != config.data.source:
        config = override(config, {"data.source": source})
    try:
        return make_dataset(config.data.source, split, batch_size=int(batch_size or config.batch_size), train=train,
                            preprocessing=metadata["preprocessing"], image_size=image_size(config, metadata),
                            resize_size=int(config.data.resize_size) or None,
                            scale=(float(config.data.min_crop_area), 1.0), seed=data_seed(config),
                            flip=None if config.data.random_flip else False,
                            **data_options(config, role or ("train" if train else "eval")))
    except UnreadableImagesError as e:
        raise UnreadableImagesError(e.root, e.failures, hint="--config.data.skip_corrupt=True") from None


# --------------------------------------------------------------------------- weights and model
def weights_metadata(config: Any) -> dict[str, Any]:
    """The weights' ``metadata.json``, or the registry's equivalent for a random initialisation."""
    if not config.weights:
        return store.build_metadata(config.model.arch, config.model.source, None, class_names=None)
    if not os.path.isdir(config.weights):
        raise FileNotFoundError(
            f"no converted weights at {config.weights!r} (config field weights): make them with `python "
            f"scripts/convert_weights.py --arch ARCH --source SOURCE --output {config.weights}` (a recipe's "
            f"docstring gives its command), point --config.weights at another directory, or train from scratch "
            f"with --config.weights=''")
    return store.read_metadata(config.weights)


def build_model(config: Any, metadata: Mapping[str, Any], num_classes: int) -> tuple[Any, dict[str, Any]]:
    """(model, variables): the converted weights with a fresh ``num_classes`` head, or a random init."""
    dtype, fold = compute_dtype(config), bool(config.model.fold_frozen_bn)
    if config.weights:
        model, variables, _ = store.load_pretrained(config.weights, num_classes, int(config.seed), dtype=dtype,
                                                    fold_frozen_bn=fold)
    else:
        model = registry.create(metadata["arch"], metadata["source"], num_classes=num_classes, dtype=dtype,
                                fold_frozen_bn=fold, **(metadata.get("model_kwargs") or {}))
        variables = init_variables(model, image_size(config, metadata), int(config.seed))
    if config.model.head_init == "zeros":  # every class starts equally likely, whatever the feature scale
        head = {k: np.zeros_like(v) for k, v in variables["params"]["head"].items()}
        variables = {**variables, "params": {**variables["params"], "head": head}}
    return model, variables


def reinit_variables(config: Any, metadata: Mapping[str, Any], model: Any, variables: Mapping[str, Any]) -> dict:
    """``freeze.reinit_from``: that stage and every later one (head included) freshly initialised from
    the run's seed with the source framework's own initialisers (``tl_jax.models.reinit``)."""
    first = config.freeze.reinit_from
    first = int(first) if isinstance(first, int) or str(first).lstrip("-").isdigit() else str(first)
    family = registry.model_config(metadata["arch"], metadata["source"]).family
    return _checked(lambda: reinit_stages(dict(variables), family=family, source=metadata["source"],
                                          stage_names=model.stage_names, first=first, seed=int(config.seed)))
