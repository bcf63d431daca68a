"""Checkpoints with orbax: separate items, asynchronous saves, keep the last N plus the best.

A checkpoint step holds named array items (a training run writes ``params``, ``batch_stats``,
``opt_state`` and ``progress`` = step and rng) and a JSON ``meta`` dict (the format version,
the items written, the data position). Items are restored independently: evaluation,
prediction and export read ``params`` and ``batch_stats`` only, so they need no optimizer and
keep working when the optimizer configuration changes.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves a folder that is not listed as a step. A listed step that cannot be read
(damaged files) is skipped with a warning in favour of the previous one; when the resumed run
saves that step again the damaged folder is first renamed ``<step>.unreadable``. If no listed
step can be read at all (e.g. a changed model) restore raises instead of silently starting over.

A save that fails (disk full, permissions, I/O error; asynchronous saves fail in the background
and surface at ``check``, the next ``save`` or ``close``) raises :class:`WriteError`, one line
naming the directory, orbax's error and the latest committed step, which stays restorable.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Callable, Iterator, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

FORMAT = 2          # 1: one "state" item holding a whole TrainState (tl_jax before the item split)
META = "meta"


class FormatError(ValueError):
    """A checkpoint written by another version of tl_jax's checkpoint layout."""


class WriteError(OSError):
    """A checkpoint could not be written; the previous committed step is intact."""


class _QuietFailedSaves(logging.Filter):
    """Orbax logs a failed background save with its traceback (and asyncio may log the failed
    write task as "never retrieved"), then raises the error again at the next save or wait, where
    ``WriteError`` reports it in one line: drop the logged copies."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.name == "asyncio":
            return "orbax" not in record.getMessage()
        return not (record.exc_info and "orbax" in record.pathname)


class _QuietUntrackedSaves(logging.Filter):
    """Saves between evals carry no metric by design (only eval steps compete for best);
    orbax warns about each of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUntrackedSaves())
logging.getLogger("absl").addFilter(_QuietFailedSaves())
logging.getLogger("asyncio").addFilter(_QuietFailedSaves())


@contextlib.contextmanager
def _quiet_orphaned_writes() -> Iterator[None]:
    """When one write of a save fails, orbax closes its event loop while tensorstore's other writes
    of that save are still in flight; each of them then reports ``RuntimeError: Event loop is
    closed`` as an unraisable exception, a traceback apiece. The failure itself reaches ``save``,
    ``check`` or ``close`` and is reported once: drop those echoes (and nothing else)."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


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
      read_only: for readers of a run (evaluate, predict, export): no saves, and the temporary
        folders of saves in progress are left alone (the writer may be running; the default
        clears them at start, which would break a save in progress).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, best_metric: str | None = "top1",
                 best_mode: str = "max", async_save: bool = True, read_only: bool = False) -> None:
        self.best_metric = best_metric
        policies: list[Any] = [ocm.LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = lambda m: float(m[best_metric])  # noqa: E731
            policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, preservation_policy=ocm.AnyPreservationPolicy(policies), best_fn=best_fn,
            best_mode=best_mode, enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
            create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
        self._unreadable: set[int] = set()
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(_quiet_orphaned_writes())

    @property
    def directory(self) -> str:
        return str(self.manager.directory)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start saving the array ``items`` (name -> pytree) and ``meta`` at ``step``. Items without
        leaves are not written (orbax refuses them). With ``metrics`` (eval results at this step)
        the checkpoint competes for best."""
        written = {k: v for k, v in items.items() if jax.tree.leaves(v)}
        if int(step) in self._unreadable:
            self._set_aside(int(step))
        if metrics is not None and self.best_metric is not None and self.best_metric not in metrics:
            raise KeyError(f"best_metric {self.best_metric!r} not among eval metrics {sorted(metrics)}")
        args = {k: ocp.args.StandardSave(v) for k, v in written.items()}
        args[META] = ocp.args.JsonSave({**meta, "format": FORMAT, "items": sorted(written)})
        with self._writing():
            self.manager.save(int(step), args=ocp.args.Composite(**args), force=True,
                              metrics=None if metrics is None or self.best_metric is None else dict(metrics))

    def check(self) -> None:
        """Raise ``WriteError`` if a background save has failed (cheap: no waiting)."""
        with self._writing():
            self.manager.check_for_errors()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Orbax's errors while writing (theirs or the OS's) as one ``WriteError``."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax raises ValueError, OSError, RuntimeError, ...
            committed = [int(n) for n in os.listdir(self.directory) if n.isdigit()] if os.path.isdir(
                self.directory) else []
            text = " ".join(str(e).split())
            raise WriteError(f"writing a checkpoint to {self.directory} failed ({type(e).__name__}: {text[:600]}); "
                             f"training stopped. The latest complete checkpoint, step {max(committed, default=0)} "
                             f"(0: none), is intact: free space or fix the directory, then run the same command "
                             f"to resume") from e

    def restore(self, target: Mapping[str, Any] | Callable[[int], Mapping[str, Any]], step: int | None = None,
                sharding: Any = None) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """Restore the items named in ``target`` from the latest readable step (or ``step``):
        ``(step, items, meta)``, or None when there is no checkpoint.

        ``target`` maps item names to trees giving structure, shapes and placement (arrays or
        ``ShapeDtypeStruct``), or is a function of the step returning that mapping (the structure
        can depend on the step, e.g. the optimizer partition under gradual unfreezing). Items the
        step did not write (they had no leaves) come back as the target's value. ``sharding``
        overrides the placement.
        """
        self.manager.reload()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        error = None
        for s in steps:
            try:
                meta = self._meta(s)
                tgt = target(s) if callable(target) else target
                stored = {k: v for k, v in tgt.items() if k in meta["items"]}
                args = {k: ocp.args.StandardRestore(abstract_like(v, sharding)) for k, v in stored.items()}
                out = self.manager.restore(s, args=ocp.args.Composite(**args))
            except FormatError:
                raise
            except Exception as e:  # damaged (or incompatible): fall back to the previous one
                if step is not None:
                    raise
                warnings.warn(f"checkpoint step {s} in {self.directory} is unreadable "
                              f"({type(e).__name__}: {str(e)[:300]}); falling back to the previous one")
                self._unreadable.add(s)
                error = e
                continue
            return s, {**tgt, **{k: out[k] for k in stored}}, meta
        if error is not None:
            raise RuntimeError(f"no checkpoint in {self.directory} could be restored (steps {steps}); was the "
                               f"model or freeze configuration changed? Move them away to start over. "
                               f"Last error: {error}") from error
        return None

    def _meta(self, step: int) -> dict[str, Any]:
        meta = dict(self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])
        if meta.get("format") != FORMAT:
            raise FormatError(f"checkpoint step {step} in {self.directory} has format {meta.get('format', 1)}, this "
                             f"tl_jax reads format {FORMAT}: train again, or evaluate it with the tl_jax that wrote it")
        return meta

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
        with self._writing():
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()
            self._quiet.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
