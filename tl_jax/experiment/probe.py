"""Linear probe on cached features: the frozen backbone runs once, only the head trains.

With every backbone stage frozen the backbone is a fixed function (BatchNorm on running
averages, no dropout), so the usual step recomputes the same forward pass every epoch and a
head step costs a whole backbone pass. Here the features are computed once per (weights, data,
split, views) and stored as ``.npz`` under ``workdir/feature_cache/``; :func:`head_setup` turns
the run's ``loop.Setup`` into one for a :class:`HeadOnly` model fed with the cached rows in the
order the image pipeline would feed them (``tl_jax.data.pipeline.epoch_order``), which
``tl_jax.experiment.run`` trains with the same ``loop.fit`` call as any run. Without augmentation
both paths see the same batches and give the same head (tested).

Views: ``feature_cache_views=1`` caches the evaluation transform of every training image; ``V > 1``
caches V epochs of the training pipeline (random-resized crop and flip). When training ends,
:func:`save_full_model` writes the backbone with the trained head as an ordinary checkpoint
(``params`` and ``batch_stats``) in ``workdir/checkpoints``, so evaluation, prediction and export
treat the run like any other; the head's own checkpoints (``workdir/probe/checkpoints``) resume an
interrupted probe. Single process only (features are gathered on the host).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import warnings
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import loop
from tl_jax.checkpoint import Checkpointer
from tl_jax.data.pipeline import epoch_order
from tl_jax.experiment.config import CHECKPOINTS
from tl_jax.experiment.setup import Experiment, data_options, data_seed, make_data
from tl_jax.freeze import FreezeSpec
from tl_jax.models import layers, registry
from tl_jax.parallel import DataParallel
from tl_jax.tree import leaf_paths
from tl_jax.weights.store import METADATA

CACHE_DIR = "feature_cache"
PROBE_DIR = "probe"
FORMAT = 1


def applies(config: Any, spec: FreezeSpec) -> bool:
    """True when ``config.feature_cache`` asks for the probe and it is exact for ``spec``."""
    if not config.feature_cache:
        return False
    why = None
    if spec.frozen_depth != len(spec.stage_names) - 1:
        why = f"frozen_depth is {spec.frozen_depth}, not every backbone stage ({len(spec.stage_names) - 1} or -1)"
    elif spec.patterns or spec.unfreeze_every:
        why = "freeze patterns or gradual unfreezing change what trains"
    elif jax.process_count() > 1:
        why = "it runs in a single process"
    if why:
        warnings.warn(f"feature_cache ignored: {why}; training the usual way")
        return False
    return True


class HeadOnly(nn.Module):
    """The head of a model as a model of its own: its input is the backbone's pre-logit features.

    ``dropout_rate`` is the dropout the full model applies right before its head in training
    (torchvision Inception-V3: 0.5; ResNet, and VGG whose dropout sits in the frozen fc stage: none).
    """
    num_classes: int
    dropout_rate: float = 0.0
    param_dtype: Any = jnp.float32

    stage_names = ("head",)

    def for_training(self, frozen_depth: int, bn_axis_name: str | None) -> "HeadOnly":
        """Nothing to configure: one stage, which trains, and no BatchNorm."""
        if frozen_depth:
            raise ValueError(f"the head alone has no stage to freeze (frozen_depth={frozen_depth})")
        return self

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(x)


def head_setup(exp: Experiment, workdir: str) -> tuple[loop.Setup, str, dict[str, Any]]:
    """(the head's ``loop.Setup``, the directory it trains in, feature-cache statistics)."""
    c, s = exp.config, exp.setup
    views = max(1, int(c.feature_cache_views))
    train_f, train_y, t_stats = cached_features(exp, workdir, c.data.train_split, "train", views)
    evals, e_stats = None, None
    if exp.eval_data is not None:
        eval_f, eval_y, e_stats = cached_features(exp, workdir, c.data.eval_split, "eval", 1)
        evals = lambda: eval_batches(eval_f, eval_y, int(c.eval_batch_size or c.batch_size))  # noqa: E731
    computed = [st for st in (t_stats, e_stats) if st and not st["hit"]]
    seconds = sum(st["seconds"] for st in computed)
    rows = sum(st["rows"] for st in computed)
    stats = {"rows": t_stats["rows"], "eval_rows": e_stats["rows"] if e_stats else 0, "cache_hit": not computed,
             "extract_s": round(seconds, 3), "extract_images_per_s": round(rows / seconds, 1) if seconds else None}
    head = {"head": s.variables["params"]["head"]}
    # Inception's dropout sits right before the head; VGG's inside the (frozen) classifier stage.
    family = registry.info(exp.info["arch"], exp.info["source"]).family
    dropout = float(s.model.dropout_rate or 0.0) if family == "inception" else 0.0
    paths = [f"head/{p}" for p in leaf_paths(head["head"])]
    mults = tuple((p, m) for p, m in s.freeze.lr_mults if any(re.search(p, q) for q in paths))
    setup = dataclasses.replace(
        s, model=HeadOnly(exp.info["num_classes"], dropout_rate=dropout), variables={"params": head},
        freeze=FreezeSpec(("head",), 0, lr_mults=mults), eval_data=evals,
        train_data=lambda start: train_batches(train_f, train_y, int(c.batch_size), data_seed(c), start),
        parallel=DataParallel("none"))
    return setup, os.path.join(workdir, PROBE_DIR), stats


def save_full_model(exp: Experiment, workdir: str, res: loop.FitResult) -> None:
    """The backbone with the trained head as an ordinary checkpoint (what evaluate/predict/export read)."""
    if not exp.setup.cadence.checkpoint_every:
        return
    params = {**exp.setup.variables["params"], "head": res.state.params["head"]}
    with Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=exp.setup.cadence.keep_checkpoints,
                      async_save=False) as ckpt:
        if res.step not in ckpt.all_steps():
            ckpt.save(res.step, {"params": params, "batch_stats": exp.setup.variables.get("batch_stats", {})},
                      {"data_position": res.step, "frozen_depth": exp.setup.freeze.frozen_depth},
                      metrics=res.final_eval)


# --------------------------------------------------------------------------- the cache
def weights_id(config: Any) -> str:
    """What identifies the backbone: the store's metadata.json (re-converting changes it) or the init."""
    if config.weights:
        with open(os.path.join(config.weights, METADATA), "rb") as f:
            return f"{os.path.abspath(config.weights)}#{hashlib.sha256(f.read()).hexdigest()}"
    return f"init:{config.model.arch}:{config.model.source}:{int(config.seed)}"


def cache_key(exp: Experiment, split: str, role: str, views: int) -> dict[str, Any]:
    c = exp.config
    key = {"format": FORMAT, "weights": weights_id(c), "arch": exp.info["arch"], "source": exp.info["source"],
           "dtype": str(c.model.dtype), "preprocessing": exp.info["preprocessing"], "data": c.data.source,
           "split": split, "image_size": exp.info["image_size"], "resize_size": int(c.data.resize_size),
           "options": data_options(c, role), "views": views}
    if views > 1:  # augmented epochs depend on the seed, the crop range and the batch composition
        key.update(seed=data_seed(c), min_crop_area=float(c.data.min_crop_area), batch_size=int(c.batch_size))
    return json.loads(json.dumps(key, sort_keys=True))


def cache_path(workdir: str, key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["split"]).strip("_")
    return os.path.join(workdir, CACHE_DIR, f"{tag}-v{key['views']}-{digest}.npz")


def _load(path: str, key: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        if json.loads(str(z["key"])) != json.loads(json.dumps(key, sort_keys=True)):
            return None
        return z["features"], z["labels"]


def _save(path: str, key: Mapping[str, Any], features: np.ndarray, labels: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
    np.savez(tmp, features=features, labels=labels, key=np.asarray(json.dumps(key, sort_keys=True)))
    os.replace(tmp, path)


def extract(model: Any, variables: Mapping[str, Any], batches: Iterator[Mapping[str, np.ndarray]],
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features (float32) and labels of every real (unmasked) example of ``batches``."""
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))
    feats, labels = [], []
    for b in batches:
        f = np.asarray(forward(variables, b["image"]), np.float32)
        keep = np.asarray(b["mask"]) > 0 if "mask" in b else np.ones(len(f), bool)
        feats.append(f[keep])
        labels.append(np.asarray(b["label"])[keep])
    return np.concatenate(feats), np.concatenate(labels).astype(np.int32)


def cached_features(exp: Experiment, workdir: str, split: str, role: str, views: int,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features, labels, stats) of ``split`` (``role`` "train" or "eval"), from the cache or computed and stored."""
    key = cache_key(exp, split, role, views)
    path = cache_path(workdir, key)
    t0 = time.time()
    hit = _load(path, key)
    if hit is not None:
        return hit[0], hit[1], {"hit": True, "seconds": time.time() - t0, "rows": len(hit[1]), "path": path}
    backbone = exp.setup.model.for_training(len(exp.info["stage_names"]) - 1, None)
    variables = exp.setup.variables
    if views == 1:   # extraction holds no gradients: the evaluation batch size
        data = make_data(exp.config, exp.metadata, split, train=False, role=role,
                         batch_size=int(exp.config.eval_batch_size) or None)
        feats, labels = extract(backbone, variables, data.batches(0))
    else:
        data = make_data(exp.config, exp.metadata, split, train=True, role=role)
        spe, parts = data.steps_per_epoch, []
        for v in range(views):
            it = data.batches(v * spe)
            parts.append(extract(backbone, variables, (next(it) for _ in range(spe))))
            close = getattr(it, "close", None)
            if close:
                close()
        feats, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    _save(path, key, feats, labels)
    return feats, labels, {"hit": False, "seconds": time.time() - t0, "rows": len(labels), "path": path}


# --------------------------------------------------------------------------- batches over cached rows
def train_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches from step ``start``: epoch e is ``epoch_order(R, seed, e)``, as in the image pipeline."""
    n = len(labels)
    spe = n // batch_size
    if spe == 0:
        raise ValueError(f"{n} cached rows cannot fill one batch of {batch_size}")
    epoch, offset = divmod(start, spe)
    while True:
        rows = epoch_order(n, seed, epoch)[:spe * batch_size].reshape(spe, batch_size)
        for row in rows[offset:]:
            yield {"image": features[row], "label": labels[row]}
        epoch, offset = epoch + 1, 0


def eval_batches(features: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """One pass in stored order; the last batch padded with ``mask == 0``."""
    for i in range(0, len(labels), batch_size):
        f, y = features[i:i + batch_size], labels[i:i + batch_size]
        pad = batch_size - len(y)
        mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
        if pad:
            f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), f.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        yield {"image": f, "label": y, "mask": mask}
