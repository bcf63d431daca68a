"""A run directory's life, for every kind of run (train, sweep, each run of an ablation, the probes).

A run directory ("workdir") is made for one config (``config.json``, and for a sweep the swept
values): a restart with a config that changes what is trained is refused in one line, a finished
run (its result file, written last) is reported instead of retrained, one live writer at a time
holds ``.lock`` (``tl_jax.experiment.lock``), and every JSON file is written atomically by process
0 with one error policy: a write that fails names the file and the fix, and leaves no half-written
file behind.

    config.json     the config as given
    run.json        what the run derived from it: model, stages, preprocessing, classes, steps
    metrics.jsonl   one JSON object per event (train logs, evals), appended across restarts
    tensorboard/    the same scalars as TensorBoard event files
    checkpoints/    orbax checkpoints, the latest N plus the best by eval top-1
    result.json     written last, so its presence means "finished" (a sweep: sweep.json)
    .lock           while a run writes it
    activations/    activations of the frozen prefix, cached (``tl_jax.experiment.activations``)
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Mapping

import jax

from tl_jax.experiment.config import ConfigError, flatten
from tl_jax.experiment.lock import WorkdirLock

CONFIG, RUN, METRICS, RESULT = "config.json", "run.json", "metrics.jsonl", "result.json"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
# Fields that may change when a run is restarted: they do not change what is trained.
RESTART_MUTABLE = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                   "data.data_dir", "data.skip_corrupt", "tensorboard")


def check_same(old: Mapping[str, Any], new: Mapping[str, Any], workdir: str) -> None:
    """Refuse to continue a run directory with a config that changes what is trained."""
    a, b = flatten(old), flatten(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESTART_MUTABLE)
    if diff:
        changes = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"{workdir} holds a run with another config ({changes}); continuing it would mix two "
                          f"experiments: use a new --workdir, or delete {workdir} to start over")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: Any) -> None:
    """Atomic write by process 0: a temporary file renamed; a failure names ``path`` and leaves nothing."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:   # ENOSPC names no file: say which one; leave no half-written file
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(f"cannot write {path} ({e.strerror or e}): free space or fix the permissions, then run "
                      f"the same command again") from e


class RunDir:
    """One run directory: made for ``config`` (and ``plan``, what else identifies it, e.g. a sweep's
    values, kept in ``plan_file``); finished when ``result_file`` exists."""

    def __init__(self, path: str, config: Mapping[str, Any], *, result_file: str = RESULT,
                 plan: Mapping[str, Any] | None = None, plan_file: str | None = None):
        self.path, self.config, self.result_file = os.path.abspath(path), dict(config), result_file
        self.plan, self.plan_file = plan, plan_file

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def finished(self) -> dict[str, Any] | None:
        """The result of a finished run, or None. A directory made for another config or plan is refused."""
        if os.path.isfile(self.file(CONFIG)):
            check_same(read_json(self.file(CONFIG)), self.config, self.path)
        if self.plan_file and os.path.isfile(self.file(self.plan_file)):
            held = read_json(self.file(self.plan_file))
            if held != json.loads(json.dumps(self.plan)):
                raise ConfigError(f"{self.path} holds a run of other values ({held}); use a new --workdir, or "
                                  f"delete {self.path} to start over")
        return self.result()

    def result(self) -> dict[str, Any] | None:
        path = self.file(self.result_file)
        return read_json(path) if os.path.isfile(path) else None

    def begin(self, describe: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any] | None:
        """Before building anything: a finished run's result (printed with ``describe`` when given), or None
        once the directory proved to be this config's and free (a live run holding it is refused)."""
        done = self.finished()
        if done is not None:
            if describe is not None:
                print(f"{self.path} is finished: {describe(done)}", flush=True)
            return done
        self.check_free()
        return None

    def check_free(self) -> None:
        """Refuse a directory a live run holds, in seconds, before anything slow is built."""
        if jax.process_index() == 0:
            WorkdirLock(self.path).check()

    @contextlib.contextmanager
    def writing(self) -> Iterator["RunDir"]:
        """Hold the lock (process 0) and record what the directory is for; the run writes inside."""
        with WorkdirLock(self.path) if jax.process_index() == 0 else contextlib.nullcontext():
            self.write(CONFIG, self.config)     # only once the config proved usable
            if self.plan_file:
                self.write(self.plan_file, self.plan)
            yield self

    def write(self, name: str, obj: Any) -> None:
        write_json(self.file(name), obj)

    def read(self, name: str) -> Any:
        return read_json(self.file(name))
