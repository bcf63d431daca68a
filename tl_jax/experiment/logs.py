"""Run logging: metrics.jsonl, TensorBoard event files, the progress bar, and reading the metrics back."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

from tl_jax.experiment.config import METRICS, TENSORBOARD


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
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunLogger:
    """``log_fn`` for ``fit``: metrics.jsonl, TensorBoard, the progress bar, and throughput.

    Throughput counts only "clean" intervals between two consecutive train logs: the first
    interval of a session (compilation) and intervals that contain an eval are left out.
    """

    def __init__(self, workdir: str, *, batch_size: int, total_steps: int, start_step: int = 0,
                 progress: bool | None = None, echo: bool = True, tensorboard: bool = True):
        import jax

        from tl_jax.loop import JsonlLogger

        lead = jax.process_index() == 0
        self.batch_size, self.echo = batch_size, echo and lead
        self.jsonl = JsonlLogger(os.path.join(workdir, METRICS), echo=False)
        self.tb = TensorBoard(os.path.join(workdir, TENSORBOARD)) if tensorboard and lead else None
        self.bar = None
        if progress is None:  # a bar when stderr is a terminal
            progress = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if progress and lead:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)
        self.clean_steps, self.clean_seconds = 0, 0.0
        self._prev: dict[str, Any] | None = None
        self._postfix: dict[str, str] = {}

    def __call__(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        if record.get("split") == "train":
            record["images_per_s"] = record["steps_per_s"] * self.batch_size
            prev = self._prev
            if prev is not None and prev.get("split") == "train":
                n = record["step"] - prev["step"]
                self.clean_steps += n
                self.clean_seconds += n / max(record["steps_per_s"], 1e-12)
            self._postfix.update(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
        elif record.get("split") == "eval":
            self._postfix.update(eval_top1=f"{record['top1']:.4f}")
        self._prev = record
        self.jsonl(record)
        if self.tb is not None and "split" in record:
            keys = ("loss", "top1", "top5", "lr", "images_per_s")
            self.tb.scalars(record["step"], {f"{record['split']}/{k}": record[k] for k in keys if k in record})
        if self.bar is not None:
            self.bar.set_postfix(self._postfix, refresh=False)
        if self.echo and (record.get("split") == "eval" or "event" in record):
            self.write(json.dumps(record, sort_keys=True))

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def steps(self, it: Iterator[Any]) -> Iterator[Any]:
        """The training batches, advancing the progress bar as ``fit`` takes each one."""
        for item in it:
            if self.bar is not None:
                self.bar.update(1)
            yield item

    def throughput(self) -> float | None:
        """Steady-state steps/s of this session (None when no clean interval was measured)."""
        return self.clean_steps / self.clean_seconds if self.clean_steps else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


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
