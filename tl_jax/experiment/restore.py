"""Restoring a run's checkpoint: evaluation, export as a weights store, and prediction."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from tl_jax.experiment.build import compute_dtype, freeze_spec, make_data, optim_config
from tl_jax.experiment.config import CHECKPOINTS, CONFIG, RUN, config_from_dict, override
from tl_jax.experiment.run import read_json


# --------------------------------------------------------------------------- restoring a run
@dataclasses.dataclass
class Restored:
    config: Any
    info: dict[str, Any]
    model: Any
    variables: dict[str, Any]
    step: int


def abstract_state(model: Any, spec: Any, optim: Any, size: int, total_steps: int, seed: int = 0) -> Any:
    """The ``TrainState`` a run checkpoints, as shapes only (nothing is computed)."""
    import jax

    from tl_jax.optim import make_optimizer
    from tl_jax.step import TrainState

    def make():
        variables = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, size, size, 3), jax.numpy.float32))
        tx = make_optimizer(optim, spec, variables["params"], total_steps)
        return TrainState.create(spec.apply_to(model).apply, variables, tx, seed)
    return jax.eval_shape(make)


def restore_run(workdir: str, checkpoint: str | int = "latest") -> Restored:
    """The model and variables of a run's checkpoint: ``"latest"``, ``"best"`` (eval top-1) or a step."""
    import jax

    from tl_jax.checkpoint import Checkpointer
    from tl_jax.models import registry

    workdir = os.path.abspath(workdir)
    for name in (CONFIG, RUN):
        if not os.path.isfile(os.path.join(workdir, name)):
            raise FileNotFoundError(f"{workdir} has no {name}: not a run directory of scripts/train.py")
    config, info = config_from_dict(read_json(os.path.join(workdir, CONFIG))), read_json(os.path.join(workdir, RUN))
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=int(config.keep_checkpoints), async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{workdir}/{CHECKPOINTS} holds no checkpoint (checkpoint_every_steps=0?)")
        if checkpoint == "latest":
            step = steps[-1]
        elif checkpoint == "best":
            step = ckpt.best_step()
            if step is None:
                raise ValueError(f"{workdir}: no checkpoint carries eval metrics; use checkpoint='latest'")
        else:
            step = int(checkpoint)
            if step not in steps:
                raise ValueError(f"{workdir} has no checkpoint at step {step}; it has {steps}")
        model = registry.create(info["arch"], info["source"], num_classes=info["num_classes"],
                                dtype=compute_dtype(config))
        spec = freeze_spec(config, info["stage_names"])
        optim = optim_config(config, info["steps_per_epoch"])
        template = abstract_state(model, spec.at_step(step), optim, info["image_size"], info["num_steps"])
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = ckpt.restore(template, step=step, sharding=device)
    finally:
        ckpt.close()
    _, items, _ = restored
    return Restored(config, info, model, {"params": items["params"], "batch_stats": items["batch_stats"]}, step)


def evaluate_run(workdir: str, checkpoint: str | int = "latest", *, split: str | None = None,
                 source: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Exact loss / top-1 / top-5 of a run's checkpoint on a dataset split (default: the run's eval split)."""
    from tl_jax import loop
    from tl_jax.parallel import DataParallel
    from tl_jax.step import TrainState

    r = restore_run(workdir, checkpoint)
    split = split or r.config.data.eval_split
    if not split:
        raise ValueError("the run has no eval split; pass split=")
    metadata = {"preprocessing": r.info["preprocessing"], "input_size": r.info["image_size"]}
    cfg = override(r.config, {"data.image_size": r.info["image_size"]})
    data = make_data(cfg, metadata, split, train=False, source=source, batch_size=batch_size)
    if data.num_classes != r.info["num_classes"]:
        raise ValueError(f"{data.name} {split!r} has {data.num_classes} classes, the model {r.info['num_classes']}")
    dp = DataParallel("none")
    state = TrainState(step=np.int32(r.step), params=r.variables["params"], batch_stats=r.variables["batch_stats"],
                       opt_state=None, rng=None, apply_fn=r.model.apply, tx=None)
    metrics = loop.evaluate(dp, dp.eval_step(), state, lambda: data.batches(0))
    return {"workdir": os.path.abspath(workdir), "checkpoint_step": r.step, "source": data.name, "split": split,
            **{k: metrics[k] for k in ("loss", "top1", "top5", "count")}}


def export(workdir: str, directory: str, checkpoint: str | int = "latest", *, overwrite: bool = False) -> str:
    """Write a run's checkpoint as a weights store (``save_pretrained``), the format of converted weights.

    The metadata carries the run's class names and its preprocessing at the trained image size,
    so ``load_pretrained`` / ``scripts/predict.py --weights`` and further fine-tuning use it as is.
    """
    from tl_jax.weights import store

    r = restore_run(workdir, checkpoint)
    spec = spec_at_size(r.info["preprocessing"], r.info["image_size"])
    metadata = store.build_metadata(r.info["arch"], r.info["source"], r.info["num_classes"],
                                    class_names=r.info["class_names"], preprocessing=spec.to_dict(),
                                    input_size=spec.crop_size, resize_size=spec.resize_size,
                                    trained_in=os.path.abspath(workdir), trained_step=r.step)
    return str(store.save_pretrained(directory, r.variables, metadata, overwrite=overwrite))


# --------------------------------------------------------------------------- prediction
def spec_at_size(preprocessing: Mapping[str, Any] | str, size: int) -> Any:
    """The preprocessing spec with its crop at ``size`` and the resize in the same ratio (as the data pipeline)."""
    from tl_jax import preprocess

    s = preprocess.get_spec(preprocessing)
    if size == s.crop_size:
        return s
    return dataclasses.replace(s, crop_size=size, resize_size=int(round(size * s.resize_size / s.crop_size)))


def load_for_prediction(*, workdir: str | None = None, weights: str | None = None,
                        checkpoint: str | int = "best") -> tuple[Any, dict[str, Any], Any, list[str]]:
    """(model, variables, preprocessing spec, class names) of a run checkpoint or a weights store."""
    if (workdir is None) == (weights is None):
        raise ValueError("give exactly one of workdir (a training run) or weights (a converted-weights directory)")
    if workdir is not None:
        try:
            r = restore_run(workdir, checkpoint)
        except ValueError:
            if checkpoint != "best":
                raise
            r = restore_run(workdir, "latest")
        names = r.info["class_names"] or [f"class_{i}" for i in range(r.info["num_classes"])]
        return r.model, r.variables, spec_at_size(r.info["preprocessing"], r.info["image_size"]), names
    from tl_jax.weights.store import load_pretrained

    model, variables, meta = load_pretrained(weights)
    if meta["num_classes"] is None:
        raise ValueError(f"{weights} holds a backbone without a head: nothing to predict")
    names = meta.get("class_names") or [f"class_{i}" for i in range(meta["num_classes"])]
    return model, variables, spec_at_size(meta["preprocessing"], int(meta["input_size"])), names


def predict(paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32, **load_kw: Any) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for image files (the weights' evaluation preprocessing)."""
    import jax
    from PIL import Image

    from tl_jax import preprocess

    model, variables, spec, names = load_for_prediction(**load_kw)
    k = min(top_k, len(names))
    forward = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype(np.float32), axis=-1))
    out = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        images = []
        for p in chunk:
            with Image.open(p) as im:
                images.append(preprocess.prepare(im, spec))
        x = np.stack(images)
        pad = batch_size - len(chunk) if len(paths) > batch_size else 0  # one compiled shape for long lists
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        probs = np.asarray(forward(variables, x))[:len(chunk)]
        for p, row in zip(chunk, probs):
            top = np.argsort(-row, kind="stable")[:k]
            out.append({"image": p, "top_k": [{"class": names[j], "index": int(j), "prob": float(row[j])}
                                              for j in top]})
    return out
