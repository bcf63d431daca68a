"""Run files and training: ``prepare`` builds a run from a config, ``train`` trains, resumes or reports it."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from typing import Any, Iterator, Mapping

from tl_jax.experiment.build import build_model, freeze_spec, make_data, num_steps, optim_config, weights_metadata
from tl_jax.experiment.config import (CHECKPOINTS, CONFIG, RESULT, RUN, _check_same_config, config_to_dict,
                                      validate)
from tl_jax.experiment.logs import RunLogger, eval_history, read_metrics, total_wall_time


class StopTraining(Exception):
    """Raised inside the data iterator to leave ``fit`` at a step boundary (``stop_at_step``)."""


# --------------------------------------------------------------------------- run files
def _write_json(path: str, obj: Any) -> None:
    """Atomic write; in a multi-process run only process 0 writes the run files."""
    if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def read_result(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, RESULT)
    return read_json(path) if os.path.isfile(path) else None


@dataclasses.dataclass
class Run:
    """Everything ``train`` builds before training (also what evaluate/predict rebuild)."""
    config: Any
    metadata: dict[str, Any]
    train_data: Any
    eval_data: Any | None
    model: Any
    variables: dict[str, Any]
    spec: Any
    optim: Any
    num_steps: int
    info: dict[str, Any]


def prepare(config: Any) -> Run:
    """Weights metadata -> data -> model and variables -> freeze spec -> optimizer settings."""
    validate(config)
    metadata = weights_metadata(config)
    validate(config, metadata["stage_names"])
    train_data = make_data(config, metadata, config.data.train_split, train=True)
    eval_data = make_data(config, metadata, config.data.eval_split, train=False) if config.data.eval_split else None
    classes = train_data.num_classes
    if config.data.num_classes and config.data.num_classes != classes:
        raise ValueError(f"config.data.num_classes={config.data.num_classes} but {config.data.source} "
                         f"{config.data.train_split!r} has {classes} classes")
    if eval_data is not None and eval_data.num_classes != classes:
        raise ValueError(f"the eval split {config.data.eval_split!r} has {eval_data.num_classes} classes, "
                         f"the train split {classes}")
    model, variables = build_model(config, metadata, classes)
    spec = freeze_spec(config, metadata["stage_names"])
    spec.check(variables["params"])
    steps_per_epoch = train_data.steps_per_epoch
    optim = optim_config(config, steps_per_epoch)
    total = num_steps(config, steps_per_epoch)
    info = {
        "arch": metadata["arch"], "source": metadata["source"], "stage_names": list(metadata["stage_names"]),
        "preprocessing": metadata["preprocessing"], "image_size": train_data.image_size,
        "num_classes": classes, "class_names": list(train_data.class_names),
        "weights": os.path.abspath(config.weights) if config.weights else "",
        "frozen_depth": spec.frozen_depth, "frozen_stages": list(metadata["stage_names"][:spec.frozen_depth]),
        "num_train_examples": train_data.num_examples,
        "num_eval_examples": eval_data.num_examples if eval_data is not None else 0,
        "steps_per_epoch": steps_per_epoch, "num_steps": total, "warmup_steps": optim.warmup_steps,
        **spec.summary(variables["params"]),
    }
    return Run(config, metadata, train_data, eval_data, model, variables, spec, optim, total, info)


# --------------------------------------------------------------------------- training
def train(config: Any, workdir: str, *, progress: bool | None = None, echo: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train (or resume, or report) the run of ``config`` in ``workdir``; returns ``result.json``'s content.

    ``stop_at_step``: leave once that many steps are done (for time-sliced jobs); make it a
    multiple of ``checkpoint_every_steps`` or the steps since the last checkpoint are redone.
    Returns ``{"finished": False, "step": ...}`` then. With ``config.feature_cache`` and every
    backbone stage frozen the head trains on cached features (``tl_jax.features``).
    """
    workdir = os.path.abspath(workdir)
    cfg_dict = config_to_dict(config)
    cfg_path = os.path.join(workdir, CONFIG)
    if os.path.isfile(cfg_path):
        _check_same_config(read_json(cfg_path), cfg_dict, workdir)
    done = read_result(workdir)
    if done is not None:
        if echo:
            print(f"{workdir} is finished (result.json): best eval top-1 {done.get('best_eval_top1')}", flush=True)
        return done
    session_start = time.time()
    run = prepare(config)
    os.makedirs(workdir, exist_ok=True)
    _write_json(cfg_path, cfg_dict)  # only once the config proved usable
    _write_json(os.path.join(workdir, RUN), {**run.info, "config": cfg_dict})
    from tl_jax import features

    fast = features.applies(config, run.spec)
    start_step = _latest_step(workdir, fast)
    logger = RunLogger(workdir, batch_size=int(config.batch_size), total_steps=run.num_steps, start_step=start_step,
                       progress=progress, echo=echo, tensorboard=bool(config.get("tensorboard", True)))
    logger({"event": "session", "step": start_step, "path": "feature_cache" if fast else "fit",
            "host": socket.gethostname(), "started": round(session_start, 3)})
    try:
        if fast:
            out = features.train_linear_probe(run, workdir, logger, stop_at_step=stop_at_step)
        else:
            out = _fit(run, workdir, logger, stop_at_step)
    except StopTraining as stop:
        logger({"event": "stopped", "step": int(stop.args[0])})
        logger.close()
        return {"finished": False, "step": int(stop.args[0])}
    except BaseException:
        logger.close()
        raise
    logger({"event": "finished", "step": run.num_steps})
    logger.close()

    records = read_metrics(workdir)
    history = eval_history(records, upto=run.num_steps)
    final = out.get("final_eval") or history.get(run.num_steps)
    best_step = max(history, key=lambda s: (history[s]["top1"], -s)) if history else None
    sps = logger.throughput()
    result = {
        "finished": True, "path": "feature_cache" if fast else "fit",
        "final_eval": _eval_fields(final), "best_eval_top1": history[best_step]["top1"] if history else None,
        "best_eval_step": best_step, "final_eval_top1": final["top1"] if final else None,
        "steps_per_s": sps, "images_per_s": sps * int(config.batch_size) if sps else None,
        "session_wall_s": time.time() - session_start, "wall_s": total_wall_time(records),
        "resumed_from": out.get("start_step", 0), "batch_size": int(config.batch_size),
        **{k: run.info[k] for k in ("arch", "source", "frozen_depth", "frozen_stages", "trainable_params",
                                    "frozen_params", "num_steps", "num_classes", "image_size")},
        **{k: v for k, v in out.items() if k.startswith("feature_")},
    }
    _write_json(os.path.join(workdir, RESULT), result)
    if echo:
        print(f"finished {workdir}: final eval top-1 {result['final_eval_top1']}, best {result['best_eval_top1']} "
              f"(step {best_step}), {result['trainable_params']:,} trainable params, "
              f"{_fmt(result['images_per_s'])} img/s, {result['wall_s']:.1f} s", flush=True)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _eval_fields(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if m is None else {k: m[k] for k in ("step", "loss", "top1", "top5", "count") if k in m}


def _latest_step(workdir: str, fast: bool) -> int:
    """Steps done by earlier sessions (for the progress bar): the newest checkpoint folder."""
    from tl_jax import features

    d = os.path.join(workdir, features.PROBE_CHECKPOINTS if fast else CHECKPOINTS)
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


def stopping(batches: Iterator[Any], start: int, stop_at_step: int | None) -> Iterator[Any]:
    """Yield batches for steps ``start, start+1, ...``; raise StopTraining before step ``stop_at_step``."""
    step = start
    try:
        for b in batches:
            if stop_at_step is not None and step >= stop_at_step:
                raise StopTraining(step)
            yield b
            step += 1
    finally:  # stop the data pipeline's prefetch thread (fit drops the endless iterator when done)
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _fit(run: Run, workdir: str, logger: RunLogger, stop_at_step: int | None) -> dict[str, Any]:
    from tl_jax import loop
    from tl_jax.parallel import DataParallel

    c = run.config
    dp = DataParallel(c.parallel, sync_bn=bool(c.sync_bn))
    if int(c.batch_size) % dp.num_devices:
        raise ValueError(f"batch_size {c.batch_size} does not split over {dp.num_devices} devices")

    def train_batches(start: int) -> Iterator[Any]:
        return logger.steps(stopping(run.train_data.batches(start), start, stop_at_step))

    eval_fn = (lambda: run.eval_data.batches(0)) if run.eval_data is not None else None
    spe = run.info["steps_per_epoch"]
    res = loop.fit(run.model, run.variables, freeze=run.spec, optim=run.optim, train_data=train_batches,
                   num_steps=run.num_steps, eval_data=eval_fn,
                   eval_every=max(1, int(round(c.eval_every_epochs * spe))) if c.eval_every_epochs else 0,
                   checkpoint_every=int(c.checkpoint_every_steps), log_every=int(c.log_every_steps),
                   workdir=workdir, parallel=dp, label_smoothing=float(c.label_smoothing), seed=int(c.seed),
                   keep_checkpoints=int(c.keep_checkpoints), log_fn=logger)
    final = res.eval_metrics
    if final is None and eval_fn is not None:  # a restart after the last step: evaluate the restored state
        state = dp.put_state(res.state) if dp.kind == "pmap" else res.state
        final = loop.evaluate(dp, dp.eval_step(), state, eval_fn)
    return {"final_eval": final, "start_step": res.start_step}
