"""Checkpoints with orbax: asynchronous saves, keep the last N plus the best, resume exactly.

A checkpoint holds the array state (step, params, batch_stats, opt_state, rng) and a
JSON ``meta`` dict (the data iterator position and anything else the loop needs to
resume deterministically). Orbax writes each step into a temporary folder and
renames it when complete, so a run killed mid-save leaves a folder that is not
listed as a step. A listed step that cannot be read (damaged files) is skipped with
a warning in favour of the previous one; when the resumed run saves that step again
the damaged folder is first renamed ``<step>.unreadable`` (kept for inspection). If no
listed step can be read at all (e.g. a changed model or freeze configuration) restore
raises instead of silently starting over.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


class _QuietUntrackedSaves(logging.Filter):
    """Saves between evals carry no metric by design (only eval steps compete for best);
    orbax warns about each of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUntrackedSaves())

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def state_items(state: Any) -> dict[str, Any]:
    """The checkpointed pytree of a ``TrainState`` (static fields excluded)."""
    return {k: getattr(state, k) for k in STATE_FIELDS}


def abstract_like(tree: Any, sharding: Any = None) -> Any:
    """``ShapeDtypeStruct`` tree placing restored leaves on ``sharding`` (default: each leaf's own)."""
    def spec(x):
        s = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return jax.tree.map(spec, tree)


class Checkpointer:
    """Orbax ``CheckpointManager`` keeping the ``keep`` latest steps plus the best by ``best_metric``.

    Args:
      directory: where step folders go (created).
      keep: how many of the latest checkpoints to keep.
      best_metric: key of the eval metrics passed to ``save``; the best checkpoint by it is
        kept too. ``None`` keeps only the latest.
      best_mode: ``"max"`` (accuracy) or ``"min"`` (loss).
      async_save: write in a background thread (``save`` returns after the device-to-host copy).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str | None = "top1",
                 best_mode: str = "max", async_save: bool = True) -> None:
        self.best_metric = best_metric
        policies: list[Any] = [ocm.LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = lambda m: float(m[best_metric])  # noqa: E731
            policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, preservation_policy=ocm.AnyPreservationPolicy(policies), best_fn=best_fn,
            best_mode=best_mode, enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
        self._unreadable: set[int] = set()

    @property
    def directory(self) -> str:
        return str(self.manager.directory)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Start saving ``state`` (a TrainState or its items) at ``step``. With ``metrics`` (eval
        results at this step) the checkpoint competes for best."""
        items = state_items(state) if hasattr(state, "opt_state") else state
        if int(step) in self._unreadable:
            self._set_aside(int(step))
        if metrics is not None and self.best_metric is not None and self.best_metric not in metrics:
            raise KeyError(f"best_metric {self.best_metric!r} not among eval metrics {sorted(metrics)}")
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                             meta=ocp.args.JsonSave(dict(meta))),
                          metrics=None if metrics is None or self.best_metric is None else dict(metrics),
                          force=True)

    def restore(self, target: Any | Callable[[int], Any], step: int | None = None,
                sharding: Any = None) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """Restore the latest readable checkpoint (or ``step``): ``(step, state_items, meta)``, or None.

        ``target`` is a TrainState / items tree giving structure, shapes and placement, or a
        function of the step returning one (the structure can depend on the step, e.g. the
        optimizer partition under gradual unfreezing); ``None`` restores the arrays as saved
        (plain containers, for inspection). ``sharding`` overrides the placement.
        """
        self.manager.reload()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        error = None
        for s in steps:
            tgt = target(s) if callable(target) else target
            items = state_items(tgt) if hasattr(tgt, "opt_state") else tgt
            abstract = None if items is None else abstract_like(items, sharding)
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as e:  # damaged (or incompatible): fall back to the previous one
                if step is not None:
                    raise
                warnings.warn(f"checkpoint step {s} in {self.directory} is unreadable "
                              f"({type(e).__name__}: {str(e)[:300]}); falling back to the previous one")
                self._unreadable.add(s)
                error = e
                continue
            return s, dict(out["state"]), dict(out["meta"])
        if error is not None:
            raise RuntimeError(f"no checkpoint in {self.directory} could be restored (steps {steps}); "
                               f"was the model or freeze configuration changed? Move them away to start "
                               f"over. Last error: {error}") from error
        return None

    def _set_aside(self, step: int) -> None:
        """Rename a damaged step folder so the step can be written again."""
        path = self.manager.directory / str(step)
        if jax.process_index() == 0 and path.exists():
            path.rename(path.parent / f"{step}.unreadable")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"tl_jax_set_aside_{step}")
        self._unreadable.discard(step)
        self.manager.reload()

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
