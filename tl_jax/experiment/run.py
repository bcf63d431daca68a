"""``train``: a config and a run directory in, a trained (or resumed, or reported) run out.

A run directory ("workdir") holds::

    config.json     the config as given (a restart with another config is refused)
    run.json        what the run derived from it: model, stages, preprocessing, classes, steps
    metrics.jsonl   one JSON object per event (train logs, evals), appended across restarts
    tensorboard/    the same scalars as TensorBoard event files
    checkpoints/    orbax checkpoints, the latest N plus the best by eval top-1
    result.json     written last, so its presence means "finished"
    .lock           while a run writes it (``tl_jax.experiment.lock``)
    feature_cache/, probe/   the cached-feature probe's features and head checkpoints

Both ways of training, the usual one and the linear probe on cached features
(``tl_jax.experiment.probe``), go through the same ``loop.fit`` call below.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Mapping

import jax

from tl_jax import loop
from tl_jax.experiment import probe
from tl_jax.experiment.config import CHECKPOINTS, CONFIG, RESULT, RUN, check_same, to_dict
from tl_jax.experiment.lock import WorkdirLock
from tl_jax.experiment.logs import RunLogger, eval_history, read_metrics, total_wall_time
from tl_jax.experiment.setup import prepare


def train(config: Any, workdir: str, *, progress: bool | None = None, echo: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train (or resume, or report) the run of ``config`` in ``workdir``; returns ``result.json``'s content.

    ``stop_at_step``: leave after that step with a checkpoint (time-sliced jobs); returns
    ``{"finished": False, "step": ...}`` then, and a later call without it (or with a larger
    one) continues. With ``config.feature_cache`` and every backbone stage frozen the head
    trains on cached features.
    """
    workdir = os.path.abspath(workdir)
    cfg = to_dict(config)
    if os.path.isfile(os.path.join(workdir, CONFIG)):
        check_same(read_json(os.path.join(workdir, CONFIG)), cfg, workdir)
    done = read_result(workdir)
    if done is not None:
        if echo:
            print(f"{workdir} is finished: {summary_line(done)}", flush=True)
        return done
    session_start = time.time()
    lead = jax.process_index() == 0
    if lead:
        WorkdirLock(workdir).check()     # refuse a held workdir in seconds, before building anything
    exp = prepare(config)
    with WorkdirLock(workdir) if lead else contextlib.nullcontext():
        _write_json(os.path.join(workdir, CONFIG), cfg)  # only once the config proved usable
        _write_json(os.path.join(workdir, RUN), {**exp.info, "config": cfg})
        fast = probe.applies(config, exp.setup.freeze)
        setup, fit_dir, cache = probe.head_setup(exp, workdir) if fast else (exp.setup, workdir, None)
        logger = RunLogger(workdir, total_steps=setup.num_steps, start_step=_latest_step(fit_dir),
                           progress=progress, echo=echo, tensorboard=bool(config.tensorboard))
        logger({"event": "session", "step": _latest_step(fit_dir), "path": "feature_cache" if fast else "fit",
                "host": socket.gethostname(), "started": round(session_start, 3)})
        if cache is not None:
            logger({"event": "feature_cache", **cache})
        try:
            res = loop.fit(setup, fit_dir, log=logger, stop_at_step=stop_at_step)
            if res.step < setup.num_steps:
                return {"finished": False, "step": res.step, "num_steps": setup.num_steps}
            if fast:
                probe.save_full_model(exp, workdir, res)
            logger({"event": "finished", "step": res.step})
        finally:
            logger.close()
        result = _result(exp, workdir, res, cache, session_start)
        _write_json(os.path.join(workdir, RESULT), result)
    if echo:
        print(f"finished {workdir}: {summary_line(result)}", flush=True)
    return result


def _result(exp: Any, workdir: str, res: loop.FitResult, cache: dict[str, Any] | None,
            session_start: float) -> dict[str, Any]:
    records = read_metrics(workdir)
    history = eval_history(records, upto=res.step)
    final = res.final_eval or history.get(res.step)
    best_step = max(history, key=lambda s: (history[s]["top1"], -s)) if history else None
    sps = res.steps_per_s
    info = exp.info
    return {
        "finished": True, "path": "fit" if cache is None else "feature_cache",
        "final_eval": {k: final[k] for k in ("step", "loss", "top1", "top5", "count")} if final else None,
        "best_eval_top1": history[best_step]["top1"] if history else None, "best_eval_step": best_step,
        "final_eval_top1": final["top1"] if final else None,
        "steps_per_s": sps, "images_per_s": sps * info["batch_size"] if sps else None,
        "session_wall_s": time.time() - session_start, "wall_s": total_wall_time(records),
        "resumed_from": res.start_step,
        **{k: info[k] for k in ("arch", "source", "frozen_depth", "frozen_stages", "trainable_params", "frozen_params",
                                "num_steps", "num_classes", "image_size", "batch_size")},
        **({f"feature_{k}": v for k, v in cache.items()} if cache is not None else {}),
    }


def summary_line(result: Mapping[str, Any]) -> str:
    """``final eval top-1 83.33%, best 85.00% (step 40), 2,565 trainable params, 512 img/s, 12.3 s``."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}%"
    speed = "n/a" if result.get("images_per_s") is None else f"{result['images_per_s']:.0f}"
    return (f"final eval top-1 {pct(result.get('final_eval_top1'))}, best {pct(result.get('best_eval_top1'))} "
            f"(step {result.get('best_eval_step')}), {result['trainable_params']:,} trainable params, {speed} img/s, "
            f"{result['wall_s']:.1f} s")


def _latest_step(directory: str) -> int:
    """Steps done by earlier sessions (for the progress bar): the newest checkpoint folder."""
    d = os.path.join(directory, CHECKPOINTS)
    return max((int(n) for n in os.listdir(d) if n.isdigit()), default=0) if os.path.isdir(d) else 0


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def read_result(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, RESULT)
    return read_json(path) if os.path.isfile(path) else None


def _write_json(path: str, obj: Any) -> None:
    """Atomic write; in a multi-process run only process 0 writes the run files."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:   # ENOSPC names no file: say which one; leave no half-written file
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(f"cannot write {path} ({e.strerror or e}): free space or fix the permissions, then run "
                      f"the same command again") from e
