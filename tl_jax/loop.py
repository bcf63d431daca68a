"""``fit(setup)``: the training loop (steps, eval, logs, checkpoints, resume, NaN guard).

Everything a run needs arrives in one :class:`Setup` (``tl_jax.experiment.setup`` builds it
from a config; the cached-feature probe derives its own from it). The loop never waits for the
device except at log, eval and checkpoint points: per-step metrics are summed on the device,
together with the first step whose loss was not finite, and checked there. A non-finite loss
raises ``FloatingPointError`` naming that step before anything after it is saved, so the last
checkpoint written stays the last good one.

Resuming: a checkpoint holds the parameters, BatchNorm statistics, optimizer state, step, rng
and the number of batches consumed; ``setup.train_data(start)`` must yield the batches from
that position on, so an interrupted run ends exactly where an uninterrupted one does.

Stopping: with checkpoints, SIGTERM and SIGINT finish the step in progress, checkpoint it (every
process the same step) and raise ``Preempted`` (``tl_jax.preemption``). A checkpoint or metrics
write that fails (disk full, permissions, I/O) raises an ``OSError`` naming the path; the last
committed checkpoint stays restorable.

Throughput (``steps_per_s``) counts steady-state steps only: the clock starts after the first
step of each compiled program (compilation) and stops during evaluations and checkpoint saves.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import preemption
from tl_jax.checkpoint import Checkpointer
from tl_jax.freeze import FreezeSpec
from tl_jax.optim import OptimConfig, make_optimizer, make_schedule, transfer_opt_state
from tl_jax.parallel import DataParallel
from tl_jax.step import TrainState, summarize_eval

Batch = Mapping[str, np.ndarray]
Log = Callable[[dict[str, Any]], None]


class Model(Protocol):
    """What the loop needs from a model: the ports in ``tl_jax.models`` and the probe's head have it."""
    stage_names: Sequence[str]

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...

    def for_training(self, frozen_depth: int, bn_axis_name: str | None) -> "Model":
        """The model with its first ``frozen_depth`` stages frozen, BatchNorm synced over ``bn_axis_name``."""


@dataclasses.dataclass(frozen=True)
class Cadence:
    """How often ``fit`` logs, evaluates and checkpoints, in steps (0: only at the end; no
    checkpoints at all when ``checkpoint_every`` is 0)."""
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything ``fit`` needs. ``train_data(start)`` yields this process's rows of every global
    batch from batch ``start`` on (dicts "image", "label"); ``eval_data()`` one padded pass with a
    "mask". Global batch sizes must divide by the device count."""
    model: Model
    variables: Mapping[str, Any]                       # {"params", "batch_stats"} to start from
    freeze: FreezeSpec
    optim: OptimConfig
    num_steps: int
    train_data: Callable[[int], Iterator[Batch]]
    eval_data: Callable[[], Iterable[Batch]] | None = None
    parallel: DataParallel = dataclasses.field(default_factory=lambda: DataParallel("none"))
    cadence: Cadence = Cadence()
    label_smoothing: float = 0.0
    seed: int = 0


@dataclasses.dataclass
class FitResult:
    state: TrainState                      # one logical copy (global arrays), ready for eval or export
    start_step: int                        # > 0 when the run resumed from a checkpoint
    step: int                              # the step it ended at (num_steps, or stop_at_step)
    final_eval: dict[str, Any] | None      # eval at num_steps (also when a restart found the run done)
    steps_per_s: float | None              # steady state; None when no step ran after compilation


@dataclasses.dataclass(frozen=True)
class _Program:
    """What depends on the frozen set: the configured model, its optimizer and compiled steps."""
    depth: int
    model: Any
    tx: Any
    train: Callable
    evaluate: Callable


# Programs of earlier runs in this process, by everything their computation depends on: a sweep or an
# ablation repeating a configuration (another seed, other labels) reuses the traced and compiled steps.
_RECENT: collections.OrderedDict[tuple, _Program] = collections.OrderedDict()
_RECENT_SIZE = 16


class _Programs:
    """One program per frozen depth (gradual unfreezing changes it), each built once."""

    def __init__(self, setup: Setup):
        self.setup, self._built = setup, {}

    def at(self, step: int) -> _Program:
        spec = self.setup.freeze.at_step(step)
        if spec.frozen_depth not in self._built:
            key = self._key(spec)
            if key not in _RECENT:
                _RECENT[key] = self._build(spec)
                while len(_RECENT) > _RECENT_SIZE:
                    _RECENT.popitem(last=False)
            _RECENT.move_to_end(key)
            self._built[spec.frozen_depth] = _RECENT[key]
        return self._built[spec.frozen_depth]

    def _build(self, spec: FreezeSpec) -> _Program:
        s, dp = self.setup, self.setup.parallel
        params, stats = s.variables["params"], s.variables.get("batch_stats", {})
        model = s.model.for_training(spec.frozen_depth, dp.bn_axis_name)
        return _Program(spec.frozen_depth, model, make_optimizer(s.optim, spec, params, s.num_steps),
                        dp.train_step(label_smoothing=s.label_smoothing, frozen_stats=spec.frozen_stats(params, stats)),
                        dp.eval_step(model.apply))

    def _key(self, spec: FreezeSpec) -> tuple:
        s, dp = self.setup, self.setup.parallel
        leaves, treedef = jax.tree.flatten(dict(s.variables))
        return (s.model, spec, s.optim, s.num_steps, s.label_smoothing, dp.kind, dp.sync_bn,
                tuple(d.id for d in dp.mesh.devices.flat), treedef, tuple((x.shape, str(x.dtype)) for x in leaves))

    def initial_state(self, step: int) -> TrainState:
        p = self.at(step)
        return TrainState.create(p.model.apply, dict(self.setup.variables), p.tx, self.setup.seed)

    def repartition(self, state: TrainState, program: _Program) -> TrainState:
        """The same arrays under a new frozen set; optimizer state carried over where leaves stay trainable."""
        dp = self.setup.parallel
        one = dp.get(state)
        opt_state = transfer_opt_state(one.opt_state, program.tx.init(one.params))
        return dp.put_state(TrainState(step=one.step, params=one.params, batch_stats=one.batch_stats,
                                       opt_state=opt_state, rng=one.rng, apply_fn=program.model.apply,
                                       tx=program.tx))


def state_items(state: TrainState) -> dict[str, Any]:
    """A TrainState as checkpoint items (see ``tl_jax.checkpoint``)."""
    return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
            "progress": {"step": state.step, "rng": state.rng}}


def fit(setup: Setup, workdir: str | None = None, *, log: Log | None = None,
        stop_at_step: int | None = None) -> FitResult:
    """Train ``setup`` for ``setup.num_steps`` steps, resuming from ``workdir/checkpoints``.

    Eval runs every ``cadence.eval_every`` steps and at the end; checkpoints every
    ``cadence.checkpoint_every`` steps, at the end and at ``stop_at_step`` (keeping the last
    ``keep_checkpoints`` plus the best by eval top-1; only checkpoints at eval steps compete for
    best). ``log`` gets every record (default: JSON lines in ``workdir/metrics.jsonl``).
    ``stop_at_step`` leaves after that step, for time-sliced jobs. With checkpoints, SIGTERM or
    SIGINT saves the step in progress and raises ``preemption.Preempted``; a checkpoint that
    cannot be written raises ``checkpoint.WriteError`` (the previous one stays restorable).
    """
    log = log or JsonlLogger(os.path.join(workdir, "metrics.jsonl") if workdir else None)
    dp, cad = setup.parallel, setup.cadence
    programs = _Programs(setup)
    ckpt = (Checkpointer(os.path.join(workdir, "checkpoints"), keep=cad.keep_checkpoints)
            if workdir and cad.checkpoint_every else None)
    # The watch closes last: a second signal while the final save commits is only noted.
    watch = preemption.Watch() if ckpt else None
    stopped_by = None
    with watch or contextlib.nullcontext(), ckpt or contextlib.nullcontext():
        state, start, position = _start(setup, programs, ckpt, log)
        end = setup.num_steps if stop_at_step is None else min(setup.num_steps, max(int(stop_at_step), start))
        meter = _Meter(log, make_schedule(setup.optim, setup.num_steps), saved=start)
        program, final = programs.at(start), None
        batches = iter(setup.train_data(position))
        try:
            for step in range(start, end):
                current = programs.at(step)
                compiles = step == start or current is not program
                if current is not program:   # gradual unfreezing: new partition, recompiled step
                    program, state = current, programs.repartition(state, current)
                    log({"event": "unfreeze", "step": step, "frozen_depth": program.depth})
                batch = dp.put_batch(next(batches))
                state, metrics = program.train(state, batch)
                meter.add(dp.get(metrics), step, dp.global_batch_size(batch), compiled=compiles)
                done = step + 1
                stop = watch is not None and watch.reached(done) and done < end
                if done == end or done % cad.log_every == 0:
                    meter.log(done)
                    if ckpt:
                        ckpt.check()      # a background save that failed stops training here
                if setup.eval_data is not None and (done == setup.num_steps or (cad.eval_every and
                                                                               done % cad.eval_every == 0)):
                    with meter.paused():
                        final = {"step": done, **evaluate(dp, program.evaluate, state.variables, setup.eval_data)}
                        log({"split": "eval", **final})
                if ckpt and (done == end or stop or done % cad.checkpoint_every == 0):
                    with meter.paused():
                        meter.check(done)
                        fresh = final if final is not None and final["step"] == done else None
                        ckpt.save(done, state_items(dp.get(state)), {"data_position": done,
                                                                     "frozen_depth": program.depth}, metrics=fresh)
                        meter.saved = done
                if stop:
                    log({"event": "preempted", "step": done})
                    stopped_by = preemption.Preempted(done, watch.signum)
                    break
        except KeyboardInterrupt as e:
            e.add_note(f"interrupted at step {start + meter.steps}; the last checkpoint is step {meter.saved} "
                       f"(0: none): run the same command to resume from it")
            raise
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if start == end == setup.num_steps and setup.eval_data is not None:   # finished earlier: report it
            final = {"step": end, **evaluate(dp, program.evaluate, state.variables, setup.eval_data)}
        if stopped_by is None and end < setup.num_steps:
            log({"event": "stopped", "step": end})
    if stopped_by is not None:      # raised once the checkpoint has committed and the handlers are restored
        raise stopped_by
    return FitResult(dp.get(state), start, end, final if end == setup.num_steps else None, meter.steps_per_s())


def _start(setup: Setup, programs: _Programs, ckpt: Checkpointer | None, log: Log) -> tuple[TrainState, int, int]:
    """The state to start from (restored, or the setup's variables), its step and data position."""
    dp = setup.parallel
    abstract = lambda s: jax.eval_shape(lambda: programs.initial_state(s))  # noqa: E731
    restored = ckpt.restore(lambda s: state_items(abstract(s)), sharding=dp.state_sharding()) if ckpt else None
    if restored:
        step, items, meta = restored
        state = abstract(step).replace(params=items["params"], batch_stats=items["batch_stats"],
                                       opt_state=items["opt_state"], step=items["progress"]["step"],
                                       rng=items["progress"]["rng"])
        log({"event": "resumed", "step": step, "data_position": meta["data_position"]})
        position = int(meta["data_position"])
    else:
        step, position, state = 0, 0, programs.initial_state(0)
    spec = setup.freeze.at_step(step)
    log({"event": "start", "step": step, "num_steps": setup.num_steps, "frozen_depth": spec.frozen_depth,
         "devices": dp.num_devices, "processes": jax.process_count(), **spec.summary(setup.variables["params"])})
    return dp.put_state(state), step, position


def evaluate(dp: DataParallel, eval_fn: Callable, variables: Any, eval_data: Callable[[], Iterable[Batch]],
             ) -> dict[str, Any]:
    """Exact metrics over ``eval_data()`` (masked sums, divided once at the end); ``variables`` in
    ``dp``'s layout, ``eval_fn`` from ``dp.eval_step``."""
    sums = None
    for batch in eval_data():
        out = dp.get(eval_fn(variables, dp.put_batch(batch)))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError("eval_data() yielded no batches")
    return summarize_eval(jax.device_get(sums))


@jax.jit
def _accumulate(acc: dict, metrics: dict, step: jax.Array) -> dict:
    bad = (acc["first_bad"] < 0) & ~jnp.isfinite(metrics["loss"])
    out = {k: acc[k] + metrics[k] for k in metrics}
    return {**out, "n": acc["n"] + 1, "first_bad": jnp.where(bad, step, acc["first_bad"])}


def _empty() -> dict:
    z = jnp.zeros((), jnp.float32)
    return {"loss": z, "top1": z, "top5": z, "n": jnp.zeros((), jnp.int32), "first_bad": jnp.full((), -1, jnp.int32)}


class _Meter:
    """Train metrics summed on the device, the NaN guard, train logs and steady-state throughput."""

    def __init__(self, log: Log, lr_at: Callable, saved: int):
        self.log_fn, self.lr_at = log, lr_at
        self.acc, self.steps, self.saved, self.batch = _empty(), 0, saved, 0
        self.clean_steps, self.clean_s = 0, 0.0
        self._mark: float | None = None       # clock start of the current clean interval
        self._mark_steps = 0
        self._paused = 0.0
        self._last_metrics: Any = None

    def add(self, metrics: dict, step: int, batch: int, *, compiled: bool) -> None:
        if compiled:   # this step compiled its program: time from its end
            self._close_interval()
            jax.block_until_ready(metrics)
            self._mark, self._mark_steps, self._paused = time.perf_counter(), self.steps + 1, 0.0
        self.acc = _accumulate(self.acc, metrics, step)
        self.steps, self.batch, self._last_metrics = self.steps + 1, batch, metrics

    def _close_interval(self) -> float | None:
        """Add the clean steps since the mark to the totals; their rate, or None."""
        if self._mark is None or self.steps == self._mark_steps:
            return None
        jax.block_until_ready(self._last_metrics)
        n, seconds = self.steps - self._mark_steps, time.perf_counter() - self._mark - self._paused
        self.clean_steps, self.clean_s = self.clean_steps + n, self.clean_s + seconds
        self._mark, self._mark_steps, self._paused = time.perf_counter(), self.steps, 0.0
        return n / max(seconds, 1e-9)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t

    def check(self, done: int) -> dict:
        """Host sync: raise on a non-finite loss since the last check."""
        host = jax.device_get(self.acc)
        if int(host["first_bad"]) >= 0:
            raise FloatingPointError(
                f"non-finite training loss at step {int(host['first_bad']) + 1}; training stopped. The last "
                f"checkpoint written (step {self.saved}, 0 = none) is intact: lower the learning rate, or check "
                f"the data, and run again")
        return host

    def log(self, done: int) -> None:
        host = self.check(done)
        rate = self._close_interval()
        n = max(int(host["n"]), 1)
        record = {"split": "train", "step": done, "loss": float(host["loss"]) / n, "top1": float(host["top1"]) / n,
                  "top5": float(host["top5"]) / n, "lr": float(self.lr_at(done - 1))}
        if rate is not None:
            record.update(steps_per_s=rate, images_per_s=rate * self.batch)
        self.log_fn(record)
        self.acc = _empty()

    def steps_per_s(self) -> float | None:
        return self.clean_steps / self.clean_s if self.clean_steps else None


class JsonlLogger:
    """``log`` writing one JSON object per line to ``path`` (process 0 only)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path and jax.process_index() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        if self.path and jax.process_index() == 0:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError as e:   # ENOSPC names no file: say which one
                raise OSError(f"cannot write {self.path} ({e.strerror or e}): free space or fix the "
                              f"permissions, then run the same command to resume") from e


__all__ = ["Cadence", "FitResult", "JsonlLogger", "Model", "Setup", "evaluate", "fit", "state_items"]
