"""Activation cache: a frozen prefix computed once, the trainable suffix trained from its output.

Stages below the lowest trainable one are a fixed function (BatchNorm on running averages, no
dropout, no gradient), so without random augmentation the usual step recomputes the same forward
pass of the prefix every epoch. With ``config.activation_cache`` the prefix's output (for a frozen
depth ``k``: the input of stage ``k``, as ``model.apply(..., stop_at=stage)`` gives it; for
``"head"`` the pooled features) is computed once per (weights, data, split, views) into a
memory-mapped ``.npy`` under ``workdir/activations/``, and :func:`cached_setup` turns the run's
``loop.Setup`` into one for the model entered at that stage (``input_stage``), fed with the cached
rows in the order the image pipeline would feed them (``tl_jax.data.pipeline.epoch_order``). The
run then trains through the same ``loop.fit`` call as any run, in ``workdir/suffix/``; when it
finishes, :func:`save_full_model` writes the prefix with the trained suffix as an ordinary
checkpoint in ``workdir/checkpoints``, so evaluation, prediction and export treat it like any run.

Exact, or not used: :func:`plan` says in one line why the cache does not apply and the run trains
the usual way when the training batches could not be replayed from cached rows (random
augmentation without views, a source read in its own order, regex freezing, a phase that unfreezes
a cached stage, several processes); the extraction also checks that the first training batch's
pixels equal the cached pass's. ``activation_cache_views = V > 1`` caches V epochs of the training
pipeline (augmented) instead, and the run trains on those V views. The size is computed from the
shapes before anything runs and printed; above ``activation_cache_max_gb`` the run is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import loop
from tl_jax.checkpoint import Checkpointer
from tl_jax.data.pipeline import epoch_order
from tl_jax.experiment.config import ConfigError
from tl_jax.experiment.rundir import CHECKPOINTS
from tl_jax.experiment.setup import Experiment, data_options, data_seed, make_data
from tl_jax.members import merge, split
from tl_jax.weights.store import METADATA

CACHE_DIR = "activations"
SUFFIX_DIR = "suffix"
FORMAT = 2


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Where the cache cuts the model and what it costs."""
    stage: str                      # the first stage trained from cached rows
    depth: int                      # stages before it (computed once)
    views: int
    row_shape: tuple[int, ...]
    dtype: str
    train_rows: int
    eval_rows: int

    @property
    def bytes(self) -> int:
        return (self.train_rows + self.eval_rows) * math.prod(self.row_shape) * np.dtype(self.dtype).itemsize

    def record(self) -> dict[str, Any]:
        """What run.json says about the cache."""
        return {"used": True, "stage": self.stage, "frozen_depth": self.depth, "views": self.views,
                "row_shape": list(self.row_shape), "dtype": self.dtype, "bytes": self.bytes}


def _why_not(exp: Experiment) -> str | None:
    """Why cached rows could not replay this run's training exactly, or None."""
    c, spec, data = exp.config, exp.setup.freeze, exp.train_data
    if min(spec.at_step(p.start).prefix_depth for p in spec.phases) == 0:
        return ("nothing below a trainable stage stays frozen for the whole run" if spec.changes
                else "the first stage trains (frozen depth 0)")
    if spec.patterns:
        return "freeze.patterns freeze leaves without freezing their stage's BatchNorm"
    if jax.process_count() > 1:
        return "it runs in a single process"
    if int(c.activation_cache_views) == 1:
        if data.random_augmentation:
            return ("the training data is randomly augmented (random crop or flip); cache augmented epochs with "
                    "--config.activation_cache_views=V, or turn the augmentation off (data.min_crop_area=1, "
                    "data.random_flip=False)")
        if not data.indexed:
            return f"{c.data.source} is read in its own shuffled order, which cached rows cannot replay"
    return None


def plan(exp: Experiment, log: Callable[[str], None] = print) -> CachePlan | None:
    """The cache for this run, or None (with one line saying why when ``activation_cache`` asked for it).

    Refuses (``ConfigError``) a cache larger than ``activation_cache_max_gb``, before anything runs."""
    c, spec = exp.config, exp.setup.freeze
    if not c.activation_cache:
        return None
    why = _why_not(exp)
    if why:
        warnings.warn(f"activation_cache not used: {why}; training the usual way")
        return None
    depth = min(spec.at_step(p.start).prefix_depth for p in spec.phases)
    names, views = tuple(exp.setup.model.stage_names), int(c.activation_cache_views)
    size = exp.info["image_size"]
    x = jax.ShapeDtypeStruct((1, size, size, getattr(exp.setup.model, "in_channels", 3)), jnp.float32)
    out = jax.eval_shape(lambda v, x: exp.setup.model.apply(v, x, stop_at=names[depth]), exp.setup.variables, x)
    cache = CachePlan(names[depth], depth, views, tuple(out.shape[1:]), str(np.dtype(out.dtype)),
                      exp.info["num_train_examples"] if views == 1 else views * exp.train_data.steps_per_epoch
                      * int(c.batch_size), exp.info["num_eval_examples"])
    gb, limit = cache.bytes / 2 ** 30, float(c.activation_cache_max_gb)
    if gb > limit:
        raise ConfigError(f"the activation cache at {cache.stage} would hold {gb:.2f} GB ({cache.train_rows + cache.eval_rows:,} "
                          f"rows of {cache.row_shape} {cache.dtype}), above activation_cache_max_gb={limit:g}: raise "
                          f"that limit, freeze more stages, use fewer views, or set activation_cache=False")
    log(f"activation cache: {names[:depth][-1]} output -> {cache.stage}, {cache.train_rows:,} + {cache.eval_rows:,} "
        f"rows of {cache.row_shape} {cache.dtype}, {gb:.3f} GB under {CACHE_DIR}/")
    return cache


def cached_setup(exp: Experiment, workdir: str, cache: CachePlan) -> tuple[loop.Setup, dict[str, Any]] | None:
    """(the suffix's ``loop.Setup``, cache statistics), or None where the extraction found the cache
    inexact (said in one line)."""
    c, s = exp.config, exp.setup
    try:
        train_x, train_y, t_stats = cached_rows(exp, workdir, cache, c.data.train_split, "train")
    except _Inexact as e:
        warnings.warn(f"activation_cache not used: {e}; training the usual way")
        return None
    evals, e_stats = None, None
    if exp.eval_data is not None:
        eval_x, eval_y, e_stats = cached_rows(exp, workdir, cache, c.data.eval_split, "eval")
        evals = lambda: eval_batches(eval_x, eval_y, int(c.eval_batch_size or c.batch_size))  # noqa: E731
    computed = [st for st in (t_stats, e_stats) if st and not st["hit"]]
    seconds = sum(st["seconds"] for st in computed)
    rows = sum(st["rows"] for st in computed)
    stats = {**cache.record(), "rows": t_stats["rows"], "eval_rows": e_stats["rows"] if e_stats else 0,
             "cache_hit": not computed, "extract_s": round(seconds, 3),
             "extract_images_per_s": round(rows / seconds, 1) if seconds else None}
    _, suffix = split(s.variables, s.model.stage_names, cache.depth)
    setup = dataclasses.replace(
        s, model=s.model.clone(input_stage=cache.stage), variables=suffix, eval_data=evals,
        train_data=lambda start: train_batches(train_x, train_y, int(c.batch_size), data_seed(c), start))
    return setup, stats


def save_full_model(exp: Experiment, workdir: str, cache: CachePlan, res: loop.FitResult) -> None:
    """The frozen prefix with the trained suffix as an ordinary checkpoint (what evaluate/predict/export read)."""
    if not exp.setup.cadence.checkpoint_every:
        return
    prefix, _ = split(exp.setup.variables, exp.setup.model.stage_names, cache.depth)
    full = merge(prefix, {"params": res.state.params, "batch_stats": res.state.batch_stats})
    with Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=exp.setup.cadence.keep_checkpoints,
                      async_save=False) as ckpt:
        if res.step not in ckpt.all_steps():
            ckpt.save(res.step, full, {"data_position": res.step, "frozen_stages": list(exp.setup.freeze.frozen_stages)},
                      metrics=res.final_eval)


# --------------------------------------------------------------------------- the cache
class _Inexact(Exception):
    """The training pipeline's pixels differ from the cached pass's."""


def weights_id(config: Any) -> str:
    """What identifies the prefix's weights: the store's metadata.json (re-converting changes it) or the init."""
    if config.weights:
        with open(os.path.join(config.weights, METADATA), "rb") as f:
            return f"{os.path.abspath(config.weights)}#{hashlib.sha256(f.read()).hexdigest()}"
    return f"init:{config.model.arch}:{config.model.source}:{int(config.seed)}"


def cache_key(exp: Experiment, cache: CachePlan, split_name: str, role: str) -> dict[str, Any]:
    c = exp.config
    views = cache.views if role == "train" else 1
    key = {"format": FORMAT, "weights": weights_id(c), "arch": exp.info["arch"], "source": exp.info["source"],
           "dtype": str(c.model.dtype), "fold_frozen_bn": bool(c.model.fold_frozen_bn), "stage": cache.stage,
           "reinit": [str(c.freeze.reinit_from), int(c.seed)] if str(c.freeze.reinit_from) else None,
           "preprocessing": exp.info["preprocessing"], "data": c.data.source, "split": split_name,
           "image_size": exp.info["image_size"], "resize_size": int(c.data.resize_size),
           "options": data_options(c, role), "views": views}
    if views > 1:  # augmented epochs depend on the seed, the crop range and the batch composition
        key.update(seed=data_seed(c), min_crop_area=float(c.data.min_crop_area), random_flip=bool(c.data.random_flip),
                   batch_size=int(c.batch_size))
    return json.loads(json.dumps(key, sort_keys=True))


def cache_path(workdir: str, key: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["split"]).strip("_")
    return os.path.join(workdir, CACHE_DIR, f"{tag}-{key['stage']}-v{key['views']}-{digest}.npy")


def _load(path: str, key: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    meta = path[:-4] + ".json"
    if not (os.path.isfile(path) and os.path.isfile(meta)):
        return None
    with open(meta) as f:
        stored = json.load(f)
    if stored["key"] != json.loads(json.dumps(key, sort_keys=True)):
        return None
    rows = np.load(path, mmap_mode="r")
    return rows.view(stored["dtype"]) if stored["dtype"] == "bfloat16" else rows, np.asarray(stored["labels"], np.int32)


def _store(path: str, key: Mapping[str, Any], chunks: Iterator[tuple[np.ndarray, np.ndarray]], rows: int,
           row_shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Write ``chunks`` into a memory-mapped ``.npy`` (renamed into place when complete) and its key."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.npy"
    stored = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)     # .npy has no bfloat16
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=stored, shape=(rows, *row_shape))
    labels, n = [], 0
    for x, y in chunks:
        out[n:n + len(x)] = x.view(np.uint16) if dtype == "bfloat16" else x
        labels.append(y)
        n += len(x)
    if n != rows:
        raise AssertionError(f"activation cache: {n} rows computed, {rows} expected")
    out.flush()
    del out
    labels = np.concatenate(labels).astype(np.int32)
    with open(path[:-4] + ".json.tmp", "w") as f:
        json.dump({"key": key, "dtype": dtype, "labels": labels.tolist()}, f)
    os.replace(tmp, path)
    os.replace(path[:-4] + ".json.tmp", path[:-4] + ".json")
    return _load(path, key)


def cached_rows(exp: Experiment, workdir: str, cache: CachePlan, split_name: str, role: str,
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(rows, labels, stats) of ``split_name`` (``role`` "train" or "eval"), from the cache or computed and stored."""
    key = cache_key(exp, cache, split_name, role)
    path = cache_path(workdir, key)
    t0 = time.time()
    hit = _load(path, key)
    if hit is not None:
        return hit[0], hit[1], {"hit": True, "seconds": time.time() - t0, "rows": len(hit[1]), "path": path}
    c, s = exp.config, exp.setup
    prefix = s.model.for_training(s.model.stage_names[:cache.depth], None)
    forward = jax.jit(lambda v, x: prefix.apply(v, x, train=False, stop_at=cache.stage))
    variables, _ = split(s.variables, s.model.stage_names, cache.depth)
    views = cache.views if role == "train" else 1
    if views == 1:   # extraction holds no gradients: the evaluation batch size
        data = make_data(c, exp.metadata, split_name, train=False, role=role, batch_size=int(c.eval_batch_size) or None)
        batches: Iterator = data.batches(0)
        check = _FirstBatchCheck(exp) if role == "train" else None
    else:
        data = make_data(c, exp.metadata, split_name, train=True, role=role)
        spe = data.steps_per_epoch
        batches = (b for v in range(views) for b, _ in zip(data.batches(v * spe), range(spe)))
        check = None

    def chunks():
        start = 0
        for b in batches:
            keep = np.asarray(b["mask"]) > 0 if "mask" in b else np.ones(len(b["label"]), bool)
            if check is not None:
                check.see(b["image"][keep], start)
            start += int(keep.sum())
            yield np.asarray(forward(variables, b["image"]))[keep], np.asarray(b["label"])[keep]
        if check is not None:
            check.verify()
    rows = cache.train_rows if role == "train" else cache.eval_rows
    x, y = _store(path, key, chunks(), rows, cache.row_shape, cache.dtype)
    return x, y, {"hit": False, "seconds": time.time() - t0, "rows": len(y), "path": path}


class _FirstBatchCheck:
    """The training pipeline's first batch must hold exactly the cached pass's pixels of its examples."""

    def __init__(self, exp: Experiment):
        n, c = exp.info["num_train_examples"], exp.config
        self.want = epoch_order(n, data_seed(c), 0)[:int(c.batch_size)]
        it = exp.train_data.batches(0)
        self.train = next(it)["image"]
        getattr(it, "close", lambda: None)()
        self.seen = np.zeros_like(self.train)

    def see(self, images: np.ndarray, start: int) -> None:
        for slot, index in enumerate(self.want):
            if start <= index < start + len(images):
                self.seen[slot] = images[index - start]

    def verify(self) -> None:
        diff = float(np.abs(self.seen - self.train).max())
        if diff > 0:
            raise _Inexact(f"the training transform gives other pixels than the cached evaluation pass (max "
                           f"difference {diff:.3g} on the first batch)")


# --------------------------------------------------------------------------- batches over cached rows
def train_batches(rows: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches from step ``start``: epoch e is ``epoch_order(R, seed, e)``, as in the image pipeline."""
    n = len(labels)
    spe = n // batch_size
    if spe == 0:
        raise ValueError(f"{n} cached rows cannot fill one batch of {batch_size}")
    epoch, offset = divmod(start, spe)
    while True:
        order = epoch_order(n, seed, epoch)[:spe * batch_size].reshape(spe, batch_size)
        for row in order[offset:]:
            yield {"image": np.asarray(rows[row]), "label": labels[row]}
        epoch, offset = epoch + 1, 0


def eval_batches(rows: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """One pass in stored order; the last batch padded with ``mask == 0``."""
    for i in range(0, len(labels), batch_size):
        x, y = np.asarray(rows[i:i + batch_size]), labels[i:i + batch_size]
        pad = batch_size - len(y)
        mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        yield {"image": x, "label": y, "mask": mask}
