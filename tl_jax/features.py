"""Linear-probe fast path: backbone features computed once, cached on disk; only the head trains.

With every backbone stage frozen (``frozen_depth=-1``) the backbone is a fixed function
(BatchNorm on running averages, no dropout), so the usual step recomputes the same forward
pass every epoch and a head step is bounded by that pass (GUIDE section 1). Here the
features are computed once per (weights, data, split, views) and stored as ``.npz`` under
``workdir/feature_cache/``; the head then trains with the project's own ``loop.fit`` and
``step.train_step`` on a :class:`HeadOnly` model whose only parameters are the head's, fed
with the same rows in the same order as the image pipeline would feed them
(``tl_jax.data.pipeline.epoch_order``). Without augmentation both paths see the same batches
and give the same head (``tests/test_features.py`` checks it).

Views: ``feature_cache_views=1`` caches the evaluation transform of every training image (no
augmentation); ``V > 1`` caches V epochs of the training pipeline (random-resized crop and
flip), ``floor(N / batch) * batch`` augmented rows per view, and the head cycles through them.

When training ends, the backbone and the trained head are written as an ordinary full-model
checkpoint in ``workdir/checkpoints`` (with the optimizer state moved over), so evaluation,
prediction and export treat the run like any other. The head's own checkpoints
(``workdir/probe/checkpoints``) let an interrupted probe resume; the cache makes a restart cheap.
Single process only (features are gathered on the host); a multi-host run uses the usual path.
"""
from __future__ import annotations

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

from tl_jax.models import layers

CACHE_DIR = "feature_cache"
PROBE_DIR = "probe"
PROBE_CHECKPOINTS = os.path.join(PROBE_DIR, "checkpoints")
FORMAT = 1


def applies(config: Any, spec: Any) -> bool:
    """True when ``config.feature_cache`` asks for the fast path and it is exact for ``spec``."""
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
    """The head of a model as a model of its own: input = the backbone's pre-logit features.

    ``dropout_rate`` is the dropout the full model applies right before its head in training
    (torchvision Inception-V3: 0.5; ResNet and VGG with frozen fc layers: none).
    ``frozen_depth`` and ``bn_axis_name`` exist for ``loop.fit``'s model interface.
    """
    num_classes: int
    dropout_rate: float = 0.0
    frozen_depth: int = 0
    bn_axis_name: str | None = None
    param_dtype: Any = jnp.float32

    stage_names = ("head",)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        x = x.astype(jnp.float32)
        if return_features:
            return x
        if self.dropout_rate and self.frozen_depth == 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return layers.classifier(self.num_classes, name="head", param_dtype=self.param_dtype)(x)


def head_dropout(model: Any, family: str) -> float:
    """Dropout right before the head while only the head trains (VGG's sits in its frozen fc stage)."""
    if family == "inception":
        return float(model.dropout_rate or 0.0)
    return 0.0


# --------------------------------------------------------------------------- the cache
def weights_id(config: Any) -> str:
    """What identifies the backbone: the store's metadata.json (re-converting changes it) or the init."""
    if config.weights:
        from tl_jax.weights.store import METADATA

        with open(os.path.join(config.weights, METADATA), "rb") as f:
            return f"{os.path.abspath(config.weights)}#{hashlib.sha256(f.read()).hexdigest()}"
    return f"init:{config.model.arch}:{config.model.source}:{int(config.seed)}"


def cache_key(config: Any, metadata: Mapping[str, Any], split: str, role: str, views: int,
              image_size: int) -> dict[str, Any]:
    from tl_jax.experiment import data_options

    key = {"format": FORMAT, "weights": weights_id(config), "arch": metadata["arch"], "source": metadata["source"],
           "dtype": str(config.model.dtype), "preprocessing": metadata["preprocessing"],
           "data": config.data.source, "split": split, "image_size": image_size,
           "resize_size": int(config.data.resize_size), "options": data_options(config, role), "views": views}
    if views > 1:  # augmented epochs depend on the seed, the crop range and the batch composition
        key.update(seed=int(config.seed), min_crop_area=float(config.data.min_crop_area),
                   batch_size=int(config.batch_size))
    return json.loads(json.dumps(key, sort_keys=True))


def cache_path(workdir: str, key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["split"]).strip("_")
    return os.path.join(workdir, CACHE_DIR, f"{tag}-v{key['views']}-{digest}.npz")


def load_cached(path: str, key: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        if json.loads(str(z["key"])) != json.loads(json.dumps(key, sort_keys=True)):
            return None
        return z["features"], z["labels"]


def save_cached(path: str, key: Mapping[str, Any], features: np.ndarray, labels: np.ndarray) -> None:
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


def cached_features(run: Any, workdir: str, split: str, role: str, views: int,
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features, labels, stats) of ``split`` (``role`` "train" or "eval"), from the cache or computed and stored."""
    from tl_jax.experiment import make_data

    size = run.info["image_size"]
    key = cache_key(run.config, run.metadata, split, role, views, size)
    path = cache_path(workdir, key)
    t0 = time.time()
    hit = load_cached(path, key)
    if hit is not None:
        return hit[0], hit[1], {"hit": True, "seconds": time.time() - t0, "rows": len(hit[1]), "path": path}
    backbone = run.model.clone(frozen_depth=len(run.info["stage_names"]) - 1)
    cfg = run.config
    if views == 1:
        data = make_data(cfg, run.metadata, split, train=False, role=role)
        feats, labels = extract(backbone, run.variables, data.batches(0))
    else:
        data = make_data(cfg, run.metadata, split, train=True, role=role)
        spe = data.steps_per_epoch
        parts = []
        for v in range(views):
            it = data.batches(v * spe)
            parts.append(extract(backbone, run.variables, (next(it) for _ in range(spe))))
            close = getattr(it, "close", None)
            if close:
                close()
        feats, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    save_cached(path, key, feats, labels)
    return feats, labels, {"hit": False, "seconds": time.time() - t0, "rows": len(labels), "path": path}


# --------------------------------------------------------------------------- batches over cached rows
def train_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches from step ``start``: epoch e is ``epoch_order(R, seed, e)``, as in the image pipeline."""
    from tl_jax.data.pipeline import epoch_order

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


# --------------------------------------------------------------------------- training
def head_spec(spec: Any, head_params: Any) -> Any:
    """The freeze spec of the head-only model: nothing frozen, the lr multipliers that reach the head."""
    from tl_jax.freeze import FreezeSpec, leaf_paths

    paths = [f"head/{p}" for p in leaf_paths(head_params)]
    mults = tuple((p, m) for p, m in spec.lr_mults if any(re.search(p, q) for q in paths))
    return FreezeSpec(("head",), 0, lr_mults=mults)


def full_state(run: Any, head_state: Any) -> Any:
    """The full model's TrainState holding the trained head (and its optimizer state), for checkpoints."""
    from tl_jax.optim import make_optimizer, transfer_opt_state
    from tl_jax.step import TrainState

    params = {**run.variables["params"], "head": head_state.params["head"]}
    tx = make_optimizer(run.optim, run.spec, params, run.num_steps)
    opt_state = transfer_opt_state(head_state.opt_state, tx.init(params))
    return TrainState(step=head_state.step, params=params, batch_stats=run.variables.get("batch_stats", {}),
                      opt_state=opt_state, rng=head_state.rng, apply_fn=run.spec.apply_to(run.model).apply, tx=tx)


def train_linear_probe(run: Any, workdir: str, logger: Any, *, stop_at_step: int | None = None) -> dict[str, Any]:
    """Cache features, train the head with ``loop.fit``, write the full-model checkpoint."""
    from tl_jax import loop
    from tl_jax.checkpoint import Checkpointer
    from tl_jax.experiment import CHECKPOINTS, stopping
    from tl_jax.models import registry
    from tl_jax.parallel import DataParallel

    c = run.config
    views = max(1, int(c.feature_cache_views))
    batch = int(c.batch_size)
    train_f, train_y, t_stats = cached_features(run, workdir, c.data.train_split, "train", views)
    eval_f = eval_y = e_stats = None
    if run.eval_data is not None:
        eval_f, eval_y, e_stats = cached_features(run, workdir, c.data.eval_split, "eval", 1)
    computed = [s for s in (t_stats, e_stats) if s and not s["hit"]]
    extract_s = sum(s["seconds"] for s in computed)
    rows = sum(s["rows"] for s in computed)
    logger({"event": "feature_cache", "train_rows": t_stats["rows"], "eval_rows": e_stats["rows"] if e_stats else 0,
            "cache_hit": not computed, "extract_s": round(extract_s, 3),
            "extract_images_per_s": round(rows / extract_s, 1) if computed and extract_s else None})

    family = registry.info(run.info["arch"], run.info["source"]).family
    head = HeadOnly(run.info["num_classes"], dropout_rate=head_dropout(run.model, family))
    head_vars = {"params": {"head": run.variables["params"]["head"]}}
    spe = run.info["steps_per_epoch"]

    def batches(start: int) -> Iterator[Any]:
        return logger.steps(stopping(train_batches(train_f, train_y, batch, int(c.seed), start), start,
                                     stop_at_step))

    evals = (lambda: eval_batches(eval_f, eval_y, batch)) if eval_f is not None else None
    t0 = time.time()
    res = loop.fit(head, head_vars, freeze=head_spec(run.spec, head_vars["params"]["head"]), optim=run.optim,
                   train_data=batches, num_steps=run.num_steps, eval_data=evals,
                   eval_every=max(1, int(round(c.eval_every_epochs * spe))) if c.eval_every_epochs else 0,
                   checkpoint_every=int(c.checkpoint_every_steps), log_every=int(c.log_every_steps),
                   workdir=os.path.join(workdir, PROBE_DIR), parallel="none",
                   label_smoothing=float(c.label_smoothing), seed=int(c.seed),
                   keep_checkpoints=int(c.keep_checkpoints), log_fn=logger)
    head_s = time.time() - t0
    final = res.eval_metrics
    if final is None and evals is not None:  # restarted after the last step
        dp = DataParallel("none")
        final = loop.evaluate(dp, dp.eval_step(), res.state, evals)
    if int(c.checkpoint_every_steps):
        with Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=int(c.keep_checkpoints), async_save=False) as ck:
            if run.num_steps not in ck.all_steps():
                ck.save(run.num_steps, full_state(run, res.state),
                        {"data_position": run.num_steps, "frozen_depth": run.spec.frozen_depth}, metrics=final)
    steps = run.num_steps - res.start_step
    logger({"event": "head_trained", "steps": steps, "seconds": round(head_s, 3),
            "steps_per_s": round(steps / head_s, 2) if head_s else None})
    return {"final_eval": final, "start_step": res.start_step, "feature_extract_s": extract_s,
            "feature_cache_hit": not computed, "feature_rows": t_stats["rows"], "feature_head_s": head_s}


__all__ = ["HeadOnly", "applies", "cache_key", "cache_path", "cached_features", "eval_batches", "extract",
           "full_state", "head_spec", "train_batches", "train_linear_probe"]
