"""Stop training cleanly on SIGTERM or SIGINT: finish the step, checkpoint it, leave with ``Preempted``.

Preemptible cloud machines get SIGTERM and a short grace period; Ctrl-C sends SIGINT. While
``fit`` runs with checkpoints, :class:`Watch` turns either signal into a request that the loop
reads after every step (``Watch.reached(step)``); the loop then saves that step, waits for the
save to commit and raises :class:`Preempted`. The scripts print its one line,
``preempted at step N; run the same command to resume`` (``interrupted ...`` for SIGINT), and
exit with 128 + the signal number: 143 for SIGTERM, 130 for SIGINT (``tl_jax.experiment.cli``),
never the failure code 1. A second signal while the checkpoint is being written is only noted:
the handler never raises, so nothing interrupts the save (orbax commits a step by renaming its
folder when complete in any case).

Several processes must save the same step. Where ``jax.distributed`` runs (the usual multi-host
case) JAX's preemption service does it: its notifier catches SIGTERM on any host, and
``multihost_utils.reached_preemption_sync_point(step)``, called by every host at every step,
returns True on all of them at the same step (checked on CPU with two processes on 127.0.0.1).
The Python SIGTERM handler is then left alone (it would replace the service's), and SIGINT is
passed on to it as a SIGTERM of this process. If the service is turned off
(``jax_enable_preemption_service=False``) the hosts agree through a collective instead: the
maximum of every host's "stop requested" flag, every step. A single process without
``jax.distributed`` needs neither. The previous handlers are restored when the watch closes.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped at ``step`` on a signal, after writing that step's checkpoint."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = int(step), int(signum)
        verb = "interrupted" if signum == signal.SIGINT else "preempted"
        super().__init__(f"{verb} at step {self.step}; run the same command to resume")


def _service_runs() -> bool:
    """Whether ``jax.distributed`` runs with its preemption service (JAX keeps no public flag for
    the latter; without it ``reached_preemption_sync_point`` raises)."""
    if not jax.distributed.is_initialized():
        return False
    from jax._src import distributed
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class Watch:
    """``with Watch() as w:`` around a training loop; ``w.reached(step)`` after every step says
    whether to checkpoint ``step`` and stop (the same answer on every process)."""

    def __init__(self) -> None:
        self.signum: int | None = None      # the first signal this process received
        self.repeats = 0                     # signals received after the first (ignored)
        self._previous: dict[int, Any] = {}
        self._service = False

    def __enter__(self) -> "Watch":
        self._service = _service_runs()
        if threading.current_thread() is not threading.main_thread():
            return self                      # signal handlers can only be set from the main thread
        for signum in HANDLED:
            if self._service and signum == signal.SIGTERM:
                continue                     # the service's notifier owns SIGTERM
            self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.repeats += 1
            return
        self.signum = signum
        if self._service:                    # tell the other hosts through JAX's preemption service
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """True when training should save ``step`` and stop; call it once per step on every process."""
        if self._service:
            stop = multihost_utils.reached_preemption_sync_point(int(step))
        elif jax.process_count() > 1:
            stop = bool(np.max(multihost_utils.process_allgather(np.int32(self.signum is not None))))
        else:
            return self.signum is not None
        if stop and self.signum is None:
            self.signum = signal.SIGTERM       # the notice came from the service or another host
        return bool(stop)


__all__ = ["HANDLED", "Preempted", "Watch"]
