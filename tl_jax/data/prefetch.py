"""A background thread that keeps a few batches ready (and optionally already on device)."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(it: Iterator[Any], transfer: Callable[[Any], Any] | None, q: queue.Queue,
             stop: threading.Event) -> None:
    try:
        for item in it:
            if transfer is not None:
                item = transfer(item)
            if not _put(q, stop, item):
                return
        _put(q, stop, _END)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, stop, _Raised(e))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class Prefetcher(Iterator[Any]):
    """Iterates ``iterable`` in a daemon thread, ``size`` items ahead of the consumer.

    ``transfer`` (for example ``jax.device_put`` or a function building a global
    ``jax.Array`` from process-local data) runs in the thread too, so host-to-device copies
    overlap the training step. Errors raised by the producer are re-raised, unchanged, at
    the consumer's ``next``. ``close()`` (or leaving a ``with`` block) stops the thread.
    """

    def __init__(self, iterable: Iterable[Any], size: int = 2, transfer: Callable[[Any], Any] | None = None):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        # The thread holds the queue and the event, not ``self``: an abandoned Prefetcher is
        # garbage-collected, and its ``__del__`` stops the thread.
        self._thread = threading.Thread(target=_produce, args=(iter(iterable), transfer, self._queue, self._stop),
                                        daemon=True, name="tl_jax-prefetch")
        self._thread.start()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def prefetch(iterable: Iterable[Any], size: int = 2, transfer: Callable[[Any], Any] | None = None) -> Prefetcher:
    """``Prefetcher(iterable, size, transfer)``; e.g. ``prefetch(ds.batches(step), transfer=jax.device_put)``."""
    return Prefetcher(iterable, size, transfer)
