"""``train``: a config and a run directory in, a trained (or resumed, or reported) run out.

The run directory's life (config check, finished result, lock, JSON files) is
``tl_jax.experiment.rundir``'s. Both ways of training, the usual one and the one from cached
activations of the frozen prefix (``tl_jax.experiment.activations``), go through the same
``loop.fit`` call below.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

from tl_jax import loop
from tl_jax.experiment import activations
from tl_jax.experiment.config import to_dict
from tl_jax.experiment.logs import RunLogger, eval_history, read_metrics, total_wall_time
from tl_jax.experiment.rundir import CHECKPOINTS, RESULT, RUN, RunDir
from tl_jax.experiment.setup import prepare


def train(config: Any, workdir: str, *, progress: bool | None = None, echo: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train (or resume, or report) the run of ``config`` in ``workdir``; returns ``result.json``'s content.

    ``stop_at_step``: leave after that step with a checkpoint (time-sliced jobs); returns
    ``{"finished": False, "step": ...}`` then, and a later call without it (or with a larger
    one) continues. With ``config.activation_cache`` the trainable suffix trains on the frozen
    prefix's cached output where that is exact.
    """
    rd = RunDir(workdir, to_dict(config))
    done = rd.begin(summary_line if echo else None)
    if done is not None:
        return done
    session_start = time.time()
    exp = prepare(config)
    cache = activations.plan(exp, log=print if echo else lambda _: None)
    with rd.writing():
        cached = activations.cached_setup(exp, rd.path, cache) if cache else None
        setup, fit_dir, stats = (cached[0], rd.file(activations.SUFFIX_DIR), cached[1]) if cached else \
            (exp.setup, rd.path, None)
        rd.write(RUN, {**exp.info, "activation_cache": stats or {"used": False}, "config": rd.config})
        logger = RunLogger(rd.path, total_steps=setup.num_steps, start_step=_latest_step(fit_dir),
                           progress=progress, echo=echo, tensorboard=bool(config.tensorboard))
        logger({"event": "session", "step": _latest_step(fit_dir), "path": "activation_cache" if stats else "fit",
                "host": socket.gethostname(), "started": round(session_start, 3)})
        if stats is not None:
            logger({"event": "activation_cache", **stats})
        try:
            res = loop.fit(setup, fit_dir, log=logger, stop_at_step=stop_at_step)
            if res.step < setup.num_steps:
                return {"finished": False, "step": res.step, "num_steps": setup.num_steps}
            if stats is not None:
                activations.save_full_model(exp, rd.path, cache, res)
            logger({"event": "finished", "step": res.step})
        finally:
            logger.close()
        result = _result(exp, rd.path, res, stats, session_start)
        rd.write(RESULT, result)
    if echo:
        print(f"finished {rd.path}: {summary_line(result)}", flush=True)
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
        "finished": True, "path": "fit" if cache is None else "activation_cache",
        "final_eval": {k: final[k] for k in ("step", "loss", "top1", "top5", "count")} if final else None,
        "best_eval_top1": history[best_step]["top1"] if history else None, "best_eval_step": best_step,
        "final_eval_top1": final["top1"] if final else None,
        "steps_per_s": sps, "images_per_s": sps * info["batch_size"] if sps else None,
        "session_wall_s": time.time() - session_start, "wall_s": total_wall_time(records),
        "resumed_from": res.start_step,
        **{k: info[k] for k in ("arch", "source", "frozen_depth", "frozen_stages", "trainable_params", "frozen_params",
                                "num_steps", "num_classes", "image_size", "batch_size")},
        "activation_cache": cache or {"used": False},
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
