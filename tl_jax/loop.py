"""``fit``: the training loop (steps, eval, logs, checkpoints, resume, NaN policy, preemption), once.

What it trains arrives as a :class:`Trainee`: one run (:class:`Run`, built from a :class:`Setup`,
which ``tl_jax.experiment.setup`` builds from a config) or K members trained side by side in one
program (``tl_jax.members.Members``). A trainee gives the state to start from, the compiled
program of each freezing phase (train step, eval step, learning rates), its checkpoint items and
its layout on the devices; everything else is here and the same for both.

The loop never waits for the device except at log, eval and checkpoint points: per-step metrics
are summed on the device together with the first step whose loss was not finite, per member.
**Non-finite losses**: a member whose loss stops being finite is dropped (reported in a ``dropped``
event and in the result, its numbers no longer used; the others go on); when no member is left,
which for a single run is at once, training stops with ``FloatingPointError`` naming the step,
before anything after it is saved, so the last checkpoint written stays the last good one.

Resuming: a checkpoint holds the trainee's items (parameters, BatchNorm statistics, optimizer
state, step, rng) and the number of batches consumed; ``setup.train_data(start)`` must yield the
batches from that position on, so an interrupted run ends exactly where an uninterrupted one does.

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
from tl_jax.optim import OptimConfig, make_optimizer, phase_schedule, transfer_opt_state
from tl_jax.parallel import DataParallel
from tl_jax.step import TrainState, summarize_eval

Batch = Mapping[str, np.ndarray]
Log = Callable[[dict[str, Any]], None]


class Model(Protocol):
    """What the loop needs from a model: the ports in ``tl_jax.models`` have it."""
    stage_names: Sequence[str]

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...

    def for_training(self, frozen_stages: Sequence[str], bn_axis_name: str | None) -> "Model":
        """The model with ``frozen_stages`` frozen and trainable BatchNorm synced over ``bn_axis_name``."""


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
    """Everything a run needs. ``train_data(start)`` yields this process's rows of every global
    batch from batch ``start`` on (dicts "image", "label"; "image" is the model's input, images or
    cached activations); ``eval_data()`` one padded pass with a "mask". Global batch sizes must
    divide by the device count."""
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


@dataclasses.dataclass(frozen=True)
class Program:
    """What one freezing phase compiles: ``train(state, batch) -> (state, metrics)``,
    ``evaluate(state, batch) -> sums`` (``step.eval_step``'s, per member for K members) and the
    learning rate of each member as a function of the step."""
    phase: int
    frozen_stages: tuple[str, ...]
    train: Callable
    evaluate: Callable
    learning_rates: Callable[[int], list[float]]


class Layout(Protocol):
    """Where a trainee's state and batches live (``DataParallel`` for one run)."""

    def put_state(self, state: Any) -> Any: ...
    def put_batch(self, batch: Batch) -> Any: ...
    def get(self, tree: Any) -> Any: ...
    def global_batch_size(self, batch: Any) -> int: ...
    def state_sharding(self) -> Any: ...


class Trainee(Protocol):
    """What ``fit`` trains. ``members``: None for one run (scalar metrics); K when every metric and
    eval sum carries a leading member axis."""
    setup: Setup
    layout: Layout
    members: int | None

    def program(self, step: int) -> Program:
        """The compiled program of the phase in force at ``step`` (built once per phase)."""

    def initial_state(self, step: int) -> Any:
        """The host state to start from, in the structure of the phase at ``step`` (the restore template)."""

    def repartition(self, state: Any, program: Program) -> Any:
        """``state`` (one logical copy) under a new phase's program: optimizer state carried over."""

    def items(self, state: Any) -> dict[str, Any]:
        """The state as checkpoint items."""

    def from_items(self, template: Any, items: Mapping[str, Any]) -> Any:
        """The state from restored items."""

    def describe(self, step: int) -> dict[str, Any]:
        """Fields of the "start" log record."""


@dataclasses.dataclass
class FitResult:
    state: Any                             # one logical copy (global arrays), ready for eval or export
    start_step: int                        # > 0 when the run resumed from a checkpoint
    step: int                              # the step it ended at (num_steps, or stop_at_step)
    final_eval: Any                        # eval at num_steps (a dict with its step; per member a list, None if dropped)
    steps_per_s: float | None              # steady state; None when no step ran after compilation
    dropped: tuple[int, ...] = ()          # members dropped for a non-finite loss


@dataclasses.dataclass(frozen=True)
class _RunPhase:
    """One run's phase: its program and the model and optimizer its ``TrainState`` carries."""
    program: Program
    apply_fn: Callable
    tx: Any


# Phases of earlier runs in this process, by everything their computation depends on: a sweep or an
# ablation repeating a configuration (another seed, other labels) reuses the traced and compiled steps.
_RECENT: collections.OrderedDict[tuple, _RunPhase] = collections.OrderedDict()
_RECENT_SIZE = 16


def forget_programs() -> None:
    """Drop the compiled programs kept from earlier runs (benchmarks time compilation too)."""
    _RECENT.clear()


def kept_programs() -> int:
    """How many compiled programs of earlier runs this process keeps for reuse."""
    return len(_RECENT)


class Run:
    """One run as a :class:`Trainee`: a ``TrainState`` under ``setup.parallel``."""
    members = None

    def __init__(self, setup: Setup):
        self.setup, self.layout, self._built = setup, setup.parallel, {}

    def program(self, step: int) -> Program:
        return self._phase(self.setup.freeze.phase_index(step)).program

    def _phase(self, index: int) -> _RunPhase:
        if index not in self._built:
            key = self._key(index)
            if key not in _RECENT:
                _RECENT[key] = self._build(index)
                while len(_RECENT) > _RECENT_SIZE:
                    _RECENT.popitem(last=False)
            _RECENT.move_to_end(key)
            self._built[index] = _RECENT[key]
        return self._built[index]

    def _build(self, index: int) -> _RunPhase:
        s, dp = self.setup, self.setup.parallel
        start = s.freeze.phases[index].start
        spec = s.freeze.at_step(start)
        params, stats = s.variables["params"], s.variables.get("batch_stats", {})
        model = s.model.for_training(spec.frozen_stages, dp.bn_axis_name)
        schedule = phase_schedule(s.optim, s.freeze, start, s.num_steps)
        tx = make_optimizer(s.optim, spec, params, s.num_steps, schedule=schedule)
        train = dp.train_step(label_smoothing=s.label_smoothing, frozen_stats=spec.frozen_stats(params, stats))
        evaluate = dp.eval_step(model.apply)
        program = Program(index, spec.frozen_stages, train, lambda state, batch: evaluate(state.variables, batch),
                          lambda step: [float(schedule(step))])
        return _RunPhase(program, model.apply, tx)

    def _key(self, index: int) -> tuple:
        s, dp = self.setup, self.setup.parallel
        leaves, treedef = jax.tree.flatten(dict(s.variables))
        return (s.model, s.freeze, index, s.optim, s.num_steps, s.label_smoothing, dp.kind, dp.sync_bn,
                tuple(d.id for d in dp.mesh.devices.flat), treedef, tuple((x.shape, str(x.dtype)) for x in leaves))

    def initial_state(self, step: int) -> TrainState:
        phase = self._phase(self.setup.freeze.phase_index(step))
        return TrainState.create(phase.apply_fn, dict(self.setup.variables), phase.tx, self.setup.seed)

    def repartition(self, state: TrainState, program: Program) -> TrainState:
        phase = self._phase(program.phase)
        return state.replace(opt_state=transfer_opt_state(state.opt_state, phase.tx.init(state.params)),
                             apply_fn=phase.apply_fn, tx=phase.tx)

    def items(self, state: TrainState) -> dict[str, Any]:
        return state_items(state)

    def from_items(self, template: TrainState, items: Mapping[str, Any]) -> TrainState:
        return template.replace(params=items["params"], batch_stats=items["batch_stats"],
                                opt_state=items["opt_state"], step=items["progress"]["step"],
                                rng=items["progress"]["rng"])

    def describe(self, step: int) -> dict[str, Any]:
        spec = self.setup.freeze.at_step(step)
        return {"frozen_stages": list(spec.frozen_stages), "devices": self.layout.num_devices,
                "processes": jax.process_count(), **spec.summary(self.setup.variables["params"])}


def state_items(state: TrainState) -> dict[str, Any]:
    """A TrainState as checkpoint items (see ``tl_jax.checkpoint``)."""
    return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
            "progress": {"step": state.step, "rng": state.rng}}


def fit(trainee: Trainee | Setup, workdir: str | None = None, *, log: Log | None = None,
        stop_at_step: int | None = None) -> FitResult:
    """Train for ``setup.num_steps`` steps, resuming from ``workdir/checkpoints``.

    Eval runs every ``cadence.eval_every`` steps and at the end; checkpoints every
    ``cadence.checkpoint_every`` steps, at the end and at ``stop_at_step`` (keeping the last
    ``keep_checkpoints`` plus, for one run, the best by eval top-1; only checkpoints at eval steps
    compete for best). ``log`` gets every record (default: JSON lines in ``workdir/metrics.jsonl``);
    with K members its metrics are lists of K. ``stop_at_step`` leaves after that step, for
    time-sliced jobs. With checkpoints, SIGTERM or SIGINT saves the step in progress and raises
    ``preemption.Preempted``; a checkpoint that cannot be written raises ``checkpoint.WriteError``
    (the previous one stays restorable).
    """
    trainee = Run(trainee) if isinstance(trainee, Setup) else trainee
    setup, layout, cad = trainee.setup, trainee.layout, trainee.setup.cadence
    log = log or JsonlLogger(os.path.join(workdir, "metrics.jsonl") if workdir else None)
    ckpt = (Checkpointer(os.path.join(workdir, "checkpoints"), keep=cad.keep_checkpoints,
                         best_metric="top1" if trainee.members is None else None)
            if workdir and cad.checkpoint_every else None)
    # The watch closes last: a second signal while the final save commits is only noted.
    watch = preemption.Watch() if ckpt else None
    stopped_by = None
    with watch or contextlib.nullcontext(), ckpt or contextlib.nullcontext():
        state, start, position, dropped = _start(trainee, ckpt, log)
        end = setup.num_steps if stop_at_step is None else min(setup.num_steps, max(int(stop_at_step), start))
        meter = _Meter(log, trainee.members, dropped, saved=start)
        program, final = trainee.program(start), None
        batches = iter(setup.train_data(position))
        try:
            for step in range(start, end):
                current = trainee.program(step)
                compiles = step == start or current is not program
                if current is not program:   # a new freezing phase: new partition, recompiled step
                    program, state = current, layout.put_state(trainee.repartition(layout.get(state), current))
                    log({"event": "phase", "step": step, "phase": program.phase,
                         "frozen_stages": list(program.frozen_stages)})
                batch = layout.put_batch(next(batches))
                state, metrics = program.train(state, batch)
                meter.add(layout.get(metrics), step, layout.global_batch_size(batch), compiled=compiles)
                done = step + 1
                stop = watch is not None and watch.reached(done) and done < end
                if done == end or done % cad.log_every == 0:
                    meter.log(done, program.learning_rates(done - 1))
                    if ckpt:
                        ckpt.check()      # a background save that failed stops training here
                if setup.eval_data is not None and (done == setup.num_steps or (cad.eval_every and
                                                                               done % cad.eval_every == 0)):
                    with meter.paused():
                        final = {"step": done, "eval": evaluate(trainee, program, state, meter.dropped)}
                        log({"split": "eval", "step": done, **_eval_record(final["eval"], trainee.members)})
                if ckpt and (done == end or stop or done % cad.checkpoint_every == 0):
                    with meter.paused():
                        meter.check(done)
                        fresh = final["eval"] if final is not None and final["step"] == done and \
                            trainee.members is None else None
                        ckpt.save(done, trainee.items(layout.get(state)),
                                  {"data_position": done, "phase": program.phase,
                                   "frozen_stages": list(program.frozen_stages), "dropped": sorted(meter.dropped)},
                                  metrics=fresh)
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
            final = {"step": end, "eval": evaluate(trainee, program, state, meter.dropped)}
        if stopped_by is None and end < setup.num_steps:
            log({"event": "stopped", "step": end})
    if stopped_by is not None:      # raised once the checkpoint has committed and the handlers are restored
        raise stopped_by
    final_eval = None
    if final and end == setup.num_steps:
        final_eval = {"step": end, **final["eval"]} if trainee.members is None else final["eval"]
    return FitResult(layout.get(state), start, end, final_eval, meter.steps_per_s(), tuple(sorted(meter.dropped)))


def _start(trainee: Trainee, ckpt: Checkpointer | None, log: Log) -> tuple[Any, int, int, set[int]]:
    """The state to start from (restored, or the trainee's initial one), its step, data position
    and the members dropped earlier."""
    abstract = lambda s: jax.eval_shape(lambda: trainee.initial_state(s))  # noqa: E731
    restored = ckpt.restore(lambda s: trainee.items(abstract(s)),
                            sharding=trainee.layout.state_sharding()) if ckpt else None
    if restored:
        step, items, meta = restored
        state = trainee.from_items(abstract(step), items)
        log({"event": "resumed", "step": step, "data_position": meta["data_position"]})
        position, dropped = int(meta["data_position"]), set(meta.get("dropped", ()))
    else:
        step, position, state, dropped = 0, 0, trainee.initial_state(0), set()
    log({"event": "start", "step": step, "num_steps": trainee.setup.num_steps, **trainee.describe(step)})
    return trainee.layout.put_state(state), step, position, dropped


def evaluate(trainee: Trainee, program: Program, state: Any, dropped: Iterable[int] = ()) -> Any:
    """Exact metrics over ``setup.eval_data()`` (masked sums, divided once at the end): a dict, or
    with K members a list of K (None for a dropped member)."""
    return evaluate_batches(trainee.layout, program.evaluate, state, trainee.setup.eval_data, trainee.members,
                            dropped)


def evaluate_batches(layout: Layout, eval_fn: Callable, state: Any, eval_data: Callable[[], Iterable[Batch]],
                     members: int | None = None, dropped: Iterable[int] = ()) -> Any:
    """``eval_fn(state, batch)`` summed over one pass of ``eval_data()``, then divided (per member)."""
    sums = None
    for batch in eval_data():
        out = layout.get(eval_fn(state, layout.put_batch(batch)))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError("eval_data() yielded no batches")
    host = jax.device_get(sums)
    if members is None:
        return summarize_eval(host)
    return [None if i in set(dropped) else summarize_eval({k: v[i] for k, v in host.items()})
            for i in range(members)]


def _eval_record(result: Any, members: int | None) -> dict[str, Any]:
    if members is None:
        return result
    return {k: [None if r is None else r[k] for r in result] for k in ("loss", "top1", "top5", "count")}


@jax.jit
def _accumulate(acc: dict, metrics: dict, step: jax.Array) -> dict:
    bad = (acc["first_bad"] < 0) & ~jnp.isfinite(metrics["loss"])
    out = {k: acc[k] + metrics[k] for k in metrics}
    return {**out, "n": acc["n"] + 1, "first_bad": jnp.where(bad, step, acc["first_bad"])}


def _empty(members: int | None) -> dict:
    shape = () if members is None else (members,)
    z = jnp.zeros(shape, jnp.float32)
    return {"loss": z, "top1": z, "top5": z, "n": jnp.zeros((), jnp.int32), "first_bad": jnp.full(shape, -1, jnp.int32)}


class _Meter:
    """Train metrics summed on the device, the non-finite-loss policy, train logs and steady-state throughput."""

    def __init__(self, log: Log, members: int | None, dropped: set[int], saved: int):
        self.log_fn, self.members, self.dropped = log, members, set(dropped)
        self.acc, self.steps, self.saved, self.batch = _empty(members), 0, saved, 0
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
        """Host sync: apply the non-finite-loss policy to what happened since the last check."""
        host = jax.device_get(self.acc)
        first_bad = np.atleast_1d(host["first_bad"])
        new = {i: int(s) for i, s in enumerate(first_bad) if s >= 0 and i not in self.dropped}
        if not new:
            return host
        count = 1 if self.members is None else self.members
        if len(self.dropped) + len(new) == count:
            who = "" if self.members is None else (" in every member" if count > 1 else " in its member")
            raise FloatingPointError(
                f"non-finite training loss at step {min(new.values()) + 1}{who}; training stopped. The last "
                f"checkpoint written (step {self.saved}, 0 = none) is intact: lower the learning rate, or check "
                f"the data, and run again")
        self.dropped |= set(new)
        self.log_fn({"event": "dropped", "step": done, "members": sorted(new),
                     "first_nonfinite_step": [new[i] + 1 for i in sorted(new)]})
        return host

    def log(self, done: int, learning_rates: list[float]) -> None:
        host = self.check(done)
        rate = self._close_interval()
        n = max(int(host["n"]), 1)
        means = {k: np.asarray(host[k]) / n for k in ("loss", "top1", "top5")}
        if self.members is None:
            record = {k: float(v) for k, v in means.items()} | {"lr": learning_rates[0]}
        else:
            record = {k: [None if i in self.dropped else float(x) for i, x in enumerate(v)] for k, v in means.items()}
            record["lr"] = learning_rates
        record = {"split": "train", "step": done, **record}
        if rate is not None:
            record.update(steps_per_s=rate, images_per_s=rate * self.batch)
        self.log_fn(record)
        self.acc = _empty(self.members)

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


__all__ = ["Cadence", "FitResult", "JsonlLogger", "Layout", "Model", "Program", "Run", "Setup", "Trainee",
           "evaluate", "evaluate_batches", "fit", "forget_programs", "kept_programs", "state_items"]
