"""Run logging: metrics.jsonl, TensorBoard event files, the progress bar, and reading the metrics back."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import tqdm

from tl_jax.experiment.rundir import METRICS, TENSORBOARD
from tl_jax.loop import JsonlLogger


# --------------------------------------------------------------------------- logging
class TensorBoard:
    """Scalars as a TensorBoard event file, written with tensorboard's protobufs only.

    ``tensorboard``'s own writers import TensorFlow when it is installed (several seconds);
    the event file format is just length-prefixed, CRC-checked ``Event`` records.
    Disabled with a warning when the ``tensorboard`` package is missing.
    """

    def __init__(self, logdir: str):
        self.logdir, self._writer = logdir, None
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: no TensorBoard logs (metrics.jsonl has everything)")
            return
        self._event, self._summary, self._record_writer = event_pb2.Event, summary_pb2.Summary, RecordWriter

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not hasattr(self, "_event"):
            return
        if self._writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.tl_jax"
            self._writer = self._record_writer(open(os.path.join(self.logdir, name), "wb"))
            self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def _write(self, event: Any) -> None:
        try:
            self._writer.write(event.SerializeToString())
            self._writer.flush()
        except OSError as e:   # ENOSPC names no file: say which one
            raise OSError(f"cannot write TensorBoard events under {self.logdir} ({e.strerror or e}): free space "
                          f"or fix the permissions, then run the same command to resume") from e

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunLogger:
    """The ``log`` of ``loop.fit`` for a run directory: metrics.jsonl, TensorBoard, progress bar, console.

    On a terminal a progress bar shows the latest loss; elsewhere (a batch job's log file) every
    train log becomes one line such as ``step 40/100: loss 0.4321, top-1 81.2%, 312 img/s``.
    Events and evaluations are printed in both cases when ``echo``.
    """

    def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0, progress: bool | None = None,
                 echo: bool = True, tensorboard: bool = True):
        lead = jax.process_index() == 0
        self.total, self.echo = total_steps, echo and lead
        self.jsonl = JsonlLogger(os.path.join(workdir, METRICS))
        self.tb = TensorBoard(os.path.join(workdir, TENSORBOARD)) if tensorboard and lead else None
        if progress is None:  # a bar when stderr is a terminal
            progress = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             leave=True) if progress and lead else None
        self._postfix: dict[str, str] = {}

    def __call__(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        self.jsonl(record)
        split = record.get("split")
        if self.tb is not None and split:
            keys = ("loss", "top1", "top5", "lr", "images_per_s")
            self.tb.scalars(record["step"], {f"{split}/{k}": record[k] for k in keys if k in record})
        if split == "train":
            self._postfix.update(loss=f"{record['loss']:.4f}")
            if "images_per_s" in record:
                self._postfix.update(img_s=f"{record['images_per_s']:.0f}")
            if self.bar is not None:
                self.bar.update(record["step"] - self.bar.n)
                self.bar.set_postfix(self._postfix, refresh=False)
            elif self.echo:
                speed = f", {record['images_per_s']:.0f} img/s" if "images_per_s" in record else ""
                self.write(f"step {record['step']}/{self.total}: loss {record['loss']:.4f}, "
                           f"top-1 {100 * record['top1']:.1f}%{speed}")
        elif self.echo and (split == "eval" or "event" in record):
            self.write(_describe(record))

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _describe(record: Mapping[str, Any]) -> str:
    """One console line for an eval or event record (metrics.jsonl keeps every field)."""
    if record.get("split") == "eval":
        return (f"eval at step {record['step']}: top-1 {100 * record['top1']:.2f}%, top-5 {100 * record['top5']:.2f}%, "
                f"loss {record['loss']:.4f} ({record['count']} images)")
    fields = ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("event", "time"))
    return f"{record['event']}: {fields}"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, METRICS)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_history(records: Sequence[Mapping[str, Any]], upto: int | None = None) -> dict[int, dict[str, Any]]:
    """Eval records by step; a step evaluated again after a restart keeps its latest record."""
    out = {}
    for r in records:
        if r.get("split") == "eval" and (upto is None or r["step"] <= upto):
            out[int(r["step"])] = dict(r)
    return out


def total_wall_time(records: Sequence[Mapping[str, Any]]) -> float:
    """Sum over sessions of (last record - session start): restarts count only the time spent."""
    total, start, last = 0.0, None, None
    for r in records:
        if r.get("event") == "session":
            if start is not None and last is not None:
                total += last - start
            start, last = r.get("started", r["time"]), r["time"]
        elif "time" in r:
            last = r["time"]
    if start is not None and last is not None:
        total += last - start
    return total
