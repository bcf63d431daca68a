"""Reading a run: its variables, exact evaluation, export as pretrained weights, prediction.

Only the ``params`` and ``batch_stats`` items of a checkpoint are restored: no optimizer, freeze
spec or step count is rebuilt, so a run stays readable when the optimizer configuration (or the
optimizer code) changes. The model comes from ``run.json`` (arch, source, classes, dtype).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from PIL import Image

from tl_jax import loop, preprocess
from tl_jax.checkpoint import Checkpointer
from tl_jax.experiment.config import from_dict, load_config, override
from tl_jax.experiment.rundir import CHECKPOINTS, CONFIG, RUN, read_json
from tl_jax.experiment.setup import make_data
from tl_jax.models import registry
from tl_jax.models.init import variables_template
from tl_jax.parallel import DataParallel
from tl_jax.weights import store


@dataclasses.dataclass(frozen=True)
class Restored:
    config: Any                # config.json as a locked ConfigDict
    info: dict[str, Any]       # run.json
    model: Any
    variables: dict[str, Any]  # {"params", "batch_stats"}
    step: int


def restore_run(workdir: str, checkpoint: str | int = "latest") -> Restored:
    """The model and variables of a run's checkpoint: ``"latest"``, ``"best"`` (eval top-1) or a step."""
    workdir = os.path.abspath(workdir)
    for name in (CONFIG, RUN):
        if not os.path.isfile(os.path.join(workdir, name)):
            raise FileNotFoundError(f"{workdir} has no {name}: not a run directory of scripts/train.py")
    config, info = from_dict(read_json(os.path.join(workdir, CONFIG))), read_json(os.path.join(workdir, RUN))
    model = registry.create(info["arch"], info["source"], num_classes=info["num_classes"],
                            dtype=jax.numpy.dtype(info.get("dtype", config.model.dtype)),
                            **(info.get("model_kwargs") or {}))
    template = variables_template(model, info["image_size"])
    with Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=int(config.keep_checkpoints), async_save=False,
                      read_only=True) as ck:     # the run may be training: leave its saves in progress alone
        steps = ck.all_steps()
        if not steps:
            raise FileNotFoundError(f"{workdir}/{CHECKPOINTS} holds no checkpoint (trained with "
                                    f"checkpoint_every_steps=0, or not yet saved)")
        if checkpoint == "latest":
            step = steps[-1]
        elif checkpoint == "best":
            step = ck.best_step()
            if step is None:
                raise ValueError(f"{workdir}: no checkpoint carries eval metrics; use --checkpoint=latest")
        else:
            step = int(checkpoint)
            if step not in steps:
                raise ValueError(f"{workdir} has no checkpoint at step {step}; it has steps "
                                 f"{', '.join(map(str, steps))} (or use latest / best)")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        _, items, _ = ck.restore(template, step=step, sharding=device)
    return Restored(config, info, model, {"params": items["params"], "batch_stats": items.get("batch_stats", {})}, step)


def evaluate_run(workdir: str, checkpoint: str | int = "latest", *, split: str | None = None,
                 source: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Exact loss / top-1 / top-5 of a run's checkpoint on a dataset split (default: the run's eval split)."""
    r = restore_run(workdir, checkpoint)
    split = split or r.config.data.eval_split
    if not split:
        raise ValueError("the run has no eval split; pass --split")
    metadata = {"preprocessing": r.info["preprocessing"], "input_size": r.info["image_size"]}
    config = override(r.config, {"data.image_size": r.info["image_size"]})
    data = make_data(config, metadata, split, train=False, source=source,
                     batch_size=batch_size or int(config.get("eval_batch_size", 0)) or None)
    if data.num_classes != r.info["num_classes"]:
        raise ValueError(f"{data.name} {split!r} has {data.num_classes} classes, the model {r.info['num_classes']}")
    dp = DataParallel("none")
    metrics = loop.evaluate_batches(dp, dp.eval_step(r.model.apply), r.variables, lambda: data.batches(0))
    return {"workdir": os.path.abspath(workdir), "checkpoint_step": r.step, "source": data.name, "split": split,
            **{k: metrics[k] for k in ("loss", "top1", "top5", "count")}}


def evaluate_weights(weights: str, source: str, split: str, *, batch_size: int = 64,
                     config_file: str | None = None) -> dict[str, Any]:
    """Exact loss / top-1 / top-5 of converted weights as they are (their own head and preprocessing),
    beside the top-1 their publisher reports: the check that a conversion is right on real ImageNet.

    The data's classes must be the head's, in the standard ImageNet order (synset ids sorted, the
    order of tfds ``imagenet2012``, of an ILSVRC folder read by name, of torchvision's and Keras'
    category lists); another order would give a meaningless top-1, so it is refused.
    """
    model, variables, meta = store.load_pretrained(weights)
    if meta["num_classes"] is None:
        raise ValueError(f"{weights} holds a backbone without a head: nothing to evaluate")
    default = importlib.util.find_spec("configs.default").origin   # the installed configs package
    config = load_config(config_file or default, {"data.source": source, "weights": weights})
    data = make_data(config, meta, split, train=False, batch_size=batch_size)
    if data.num_classes != meta["num_classes"]:
        raise ValueError(f"{data.name} {split!r} has {data.num_classes} classes, the weights' head {meta['num_classes']}")
    names = list(data.class_names)
    if all(_SYNSET.fullmatch(n) for n in names) and names != sorted(names):
        first = next(i for i, (a, b) in enumerate(zip(names, sorted(names))) if a != b)
        raise ValueError(f"{data.name} orders its synsets differently from the weights (class {first} is "
                         f"{names[first]}, the standard sorted order has {sorted(names)[first]})")
    dp = DataParallel("none")
    metrics = loop.evaluate_batches(dp, dp.eval_step(model.apply), variables, lambda: data.batches(0))
    info = registry.model_config(meta["arch"], meta["source"])
    published = info.weights_for(meta.get("weights")) if meta.get("weights") in info.tags else None
    return {"weights": os.path.abspath(weights), "arch": meta["arch"], "source": meta["source"],
            "tag": meta.get("weights"), "data": data.name, "split": split,
            **{k: metrics[k] for k in ("loss", "top1", "top5", "count")},
            "published_top1": published.top1 / 100 if published and published.top1 is not None else None,
            "published_eval": published.top1_eval if published else ""}


_SYNSET = re.compile(r"n\d{8}")


def export(workdir: str, directory: str, checkpoint: str | int = "latest", *, overwrite: bool = False) -> str:
    """Write a run's checkpoint as a weights store (``save_pretrained``), the format of converted weights.

    The metadata carries the run's class names and its preprocessing at the trained image size,
    so ``load_pretrained``, ``scripts/predict.py --weights`` and further fine-tuning use it as is.
    """
    r = restore_run(workdir, checkpoint)
    spec = spec_at_size(r.info["preprocessing"], r.info["image_size"])
    metadata = store.build_metadata(r.info["arch"], r.info["source"], r.info["num_classes"],
                                    class_names=r.info["class_names"], preprocessing=spec.to_dict(),
                                    weights=r.info.get("weights_tag"), model_kwargs=r.info.get("model_kwargs"),
                                    input_size=spec.crop_size, resize_size=spec.resize_size,
                                    trained_in=os.path.abspath(workdir), trained_step=r.step)
    return str(store.save_pretrained(directory, r.variables, metadata, overwrite=overwrite))


# --------------------------------------------------------------------------- prediction
def spec_at_size(preprocessing: Mapping[str, Any] | str, size: int) -> preprocess.PreprocessSpec:
    """The preprocessing spec with its crop at ``size`` and the resize in the same ratio (as the data pipeline)."""
    s = preprocess.get_spec(preprocessing)
    if size == s.crop_size:
        return s
    return dataclasses.replace(s, crop_size=size, resize_size=int(round(size * s.resize_size / s.crop_size)))


def load_for_prediction(*, workdir: str | None = None, weights: str | None = None,
                        checkpoint: str | int = "best") -> tuple[Any, dict[str, Any], Any, list[str]]:
    """(model, variables, preprocessing spec, class names) of a run checkpoint or a weights store."""
    if (workdir is None) == (weights is None):
        raise ValueError("give exactly one of --workdir (a training run) or --weights (a converted-weights directory)")
    if workdir is not None:
        try:
            r = restore_run(workdir, checkpoint)
        except ValueError:
            if checkpoint != "best":
                raise
            r = restore_run(workdir, "latest")   # no eval ever ran: the latest is all there is
        names = r.info["class_names"] or [f"class_{i}" for i in range(r.info["num_classes"])]
        return r.model, r.variables, spec_at_size(r.info["preprocessing"], r.info["image_size"]), names
    model, variables, meta = store.load_pretrained(weights)
    if meta["num_classes"] is None:
        raise ValueError(f"{weights} holds a backbone without a head: nothing to predict")
    names = meta.get("class_names") or [f"class_{i}" for i in range(meta["num_classes"])]
    return model, variables, spec_at_size(meta["preprocessing"], int(meta["input_size"])), names


def predict(paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32, **load_kw: Any) -> list[dict[str, Any]]:
    """Top-k classes with probabilities per image file (the weights' evaluation preprocessing).

    An image that cannot be read gets ``{"image": path, "error": reason}`` and the others are
    still classified.
    """
    model, variables, spec, names = load_for_prediction(**load_kw)
    k = min(top_k, len(names))
    forward = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype(np.float32), axis=-1))
    prepared: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        try:
            with Image.open(p) as im:
                prepared[p] = preprocess.prepare(im, spec)
        except (OSError, ValueError, Image.DecompressionBombError) as e:   # missing, truncated, not an image, huge
            out[p] = {"image": p, "error": f"cannot read image ({e})"}
    good = list(prepared)
    for i in range(0, len(good), batch_size):
        chunk = good[i:i + batch_size]
        x = np.stack([prepared[p] for p in chunk])
        pad = batch_size - len(chunk) if len(good) > batch_size else 0  # one compiled shape for long lists
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        for p, row in zip(chunk, np.asarray(forward(variables, x))[:len(chunk)]):
            top = np.argsort(-row, kind="stable")[:k]
            out[p] = {"image": p, "top_k": [{"class": names[j], "index": int(j), "prob": float(row[j])} for j in top]}
    return [out[p] for p in paths]
