"""One writer per run directory: a lock file naming its holder, kept fresh while the run lives.

``workdir/.lock`` holds ``{"host", "pid", "started"}`` and is created atomically (``O_EXCL``); a
background thread touches it every ``HEARTBEAT_S`` seconds. A second run on the same workdir
stops at once with the holder's name. A lock left behind by a dead run is taken over with a
warning: on the same host when its pid no longer exists, on another host when it has not been
touched for ``STALE_S`` seconds. Only process 0 of a multi-process run takes the lock; reading a
run (evaluate, predict, export) never does.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import warnings
from typing import Any

LOCK = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 600.0


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir."""


class WorkdirLock:
    """``with WorkdirLock(workdir):`` around everything that writes a run directory."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        while not self._create(me):
            holder = self._holder()
            if holder is None:        # removed (or unreadable) between our two looks: try again
                continue
            why = self._gone(holder)
            if why is None:
                raise self._busy(holder)
            warnings.warn(f"taking over the lock of a run that is gone ({why}): {self.path}", stacklevel=2)
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self._thread = threading.Thread(target=self._beat, daemon=True, name="tl_jax-lock")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def check(self) -> None:
        """Raise ``WorkdirBusyError`` now if a live run holds the workdir (before a slow setup;
        entering the lock decides)."""
        holder = self._holder()
        if holder is not None and self._gone(holder) is None:
            raise self._busy(holder)

    def _gone(self, holder: dict[str, Any]) -> str | None:
        return _dead(holder, os.path.getmtime(self.path) if os.path.exists(self.path) else 0.0)

    def _busy(self, holder: dict[str, Any]) -> WorkdirBusyError:
        return WorkdirBusyError(
            f"{os.path.dirname(self.path)} is in use by another run (host {holder.get('host')}, pid "
            f"{holder.get('pid')}, started {holder.get('started')}); wait for it to finish or use "
            f"another --workdir")

    def _create(self, me: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}          # half-written or garbled: judged by its age alone

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return


def _dead(holder: dict[str, Any], touched: float) -> str | None:
    """Why the holder is gone, or None while it may still be running."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"pid {holder['pid']} has exited"
        except PermissionError:
            return None
        return None
    age = time.time() - touched
    return f"not refreshed for {age:.0f} s" if age > STALE_S else None
