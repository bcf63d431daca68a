"""A multi-epoch fine-tune with the frozen prefix cached against the same run recomputing it, end to end.

An image folder is generated (square PNGs at the training size, so that without random augmentation
the training and evaluation transforms give the same pixels), then ``train`` runs the same config
twice, with ``activation_cache`` off and on, from the same random initialisation and data order.
The record holds both wall times (process start excluded; compilation, decoding, the cache's
extraction and every evaluation included), their ratio, and how far the two runs' parameters are
apart (the cached run should end where the usual one ends).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np
from PIL import Image

from tl_jax.experiment import restore, run
from tl_jax.experiment.config import load_config
from tl_jax.tree import flat


def make_folder(root: str, classes: int, per_class: int, size: int, seed: int = 0) -> str:
    """``classes`` folders of ``per_class`` PNGs: smooth random blobs per class, so training has a signal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c:02d}"), exist_ok=True)
        centre = rng.uniform(0.2, 0.8, (3, 2))
        for i in range(per_class):
            jitter = centre + rng.normal(0, 0.05, centre.shape)
            img = np.stack([np.exp(-((xx - jx) ** 2 + (yy - jy) ** 2) / 0.02) for jx, jy in jitter], -1)
            img = np.clip(255 * (img + rng.normal(0, 0.1, img.shape)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, f"class{c:02d}", f"{i:03d}.png"))
    return root


def compare(config_file: str, *, arch: str = "resnet18", depth: int = 4, resolution: int = 128, epochs: int = 5,
            classes: int = 10, per_class: int = 40, batch: int = 32, workdir: str | None = None) -> dict[str, Any]:
    """Train the same run without and with the activation cache; the record of both."""
    root = workdir or tempfile.mkdtemp(prefix="tl_jax_cache_bench_")
    try:
        folder = make_folder(os.path.join(root, "images"), classes, per_class, resolution)
        base = {"weights": "", "model.arch": arch, "model.source": "torchvision", "model.dtype": "float32",
                "data.source": f"folder:{folder}", "data.train_split": "train[:80%]",
                "data.eval_split": "train[80%:]", "data.image_size": resolution, "data.resize_size": resolution,
                "data.min_crop_area": 1.0, "data.random_flip": False, "freeze.frozen_depth": depth,
                "batch_size": batch, "eval_batch_size": batch, "num_epochs": int(epochs), "eval_every_epochs": 1,
                "checkpoint_every_steps": 10_000, "log_every_steps": 10, "parallel": "none", "tensorboard": False,
                "optim.name": "sgd", "optim.learning_rate": 0.01}
        record: dict[str, Any] = {"arch": arch, "frozen_depth": depth, "resolution": resolution, "epochs": epochs,
                                  "images": classes * per_class, "batch": batch}
        variables = {}
        for cached in (False, True):
            d = os.path.join(root, "cached" if cached else "images_run")
            config = load_config(config_file, {**base, "activation_cache": cached})
            t = time.perf_counter()
            result = run.train(config, d, progress=False, echo=False)
            key = "cache" if cached else "no_cache"
            record[f"{key}_wall_s"] = round(time.perf_counter() - t, 2)
            record[f"{key}_top1"] = result["final_eval_top1"]
            record[f"{key}_steps_per_s"] = result["steps_per_s"]
            if cached:
                record["cache"] = result["activation_cache"]
            variables[cached] = flat(restore.restore_run(d).variables)
        record["speedup"] = round(record["no_cache_wall_s"] / record["cache_wall_s"], 2)
        record["max_relative_difference"] = max(
            float(np.linalg.norm(variables[True][k] - variables[False][k]) /
                  max(np.linalg.norm(variables[False][k]), 1e-12)) for k in variables[False])
        return record
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def environment() -> dict[str, Any]:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "platform": platform.platform(),
            "processor": platform.processor(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def run_all(config_file: str, out: str = "", **kwargs: Any) -> dict[str, Any]:
    record = {**environment(), **compare(config_file, **kwargs)}
    print(json.dumps(record), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=2)
    return record
