"""prometheus-client's multiprocess values, written to this worker's file a few times a second rather than at
every change.

With `workers: N` each worker keeps its values in an mmap'd file that /metrics reads for the whole host.
prometheus-client writes that file on every `inc` and `observe`: a global lock, a pid check and a packed
write each, about three times an in-memory increment, and a cached manifest makes four or five of them
(6% of a worker's samples under wrk). A scrape needs nothing newer than its interval, so counters, histograms
and gauges moved by `inc` or `dec` change in memory and are written when they changed: every FLUSH_SECONDS
by a thread, before this process answers /metrics, and when a worker exits. A worker killed with SIGKILL
loses at most the last FLUSH_SECONDS of its counts. A gauge's `set` is written at once, as before.

A process starts writing (its own file, and the flushing thread) when it first changes a value: the
supervisor, which forks the workers and serves nothing, never does, and keeps no thread.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from prometheus_client import values

FLUSH_SECONDS = 0.5

log = logging.getLogger("pullcache.metrics")

_lock = threading.Lock()  # every change and every flush; taken before prometheus-client's own lock, never after
_buffered: list[Any] = []  # the values made so far (metric children live as long as the process)
_counting = False  # this process has changed a value (since it started, or was forked)
_installed = False


def install() -> None:
    """Make the metrics created from now on keep their multiprocess values in memory until flushed (call
    before the first metric is made, with PROMETHEUS_MULTIPROC_DIR set; a second call does nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    multiprocess_class = values.ValueClass if getattr(values.ValueClass, "_multiprocess", False) else None
    values.ValueClass = _buffered_class(multiprocess_class or values.MultiProcessValue())
    atexit.register(flush)
    # Held across a fork, so that no flush is half-done in the copy the child gets (its thread is gone there)
    os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_after_fork_in_child)


def _buffered_class(base: Any) -> type:
    class BufferedValue(base):  # prometheus-client makes its class at run time
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            with _lock:
                self._written = self._value
                _buffered.append(self)

        def inc(self, amount: float) -> None:
            with _lock:
                if not _counting:
                    _start_counting()
                self._value += amount

        def set(self, value: float, timestamp: float | None = None) -> None:
            with _lock:
                if not _counting:
                    _start_counting()
                super().set(value, timestamp)
                self._written = value

        def write(self) -> None:
            """Put the value in the file if it changed since (called with _lock held)."""
            if self._value != self._written:
                value = self._value
                super().set(value)
                self._written = value

    return BufferedValue


def _start_counting() -> None:
    """This process's first change (called with _lock held). In a forked worker prometheus-client sees the new
    pid on this read and reloads every value from the worker's own file (none yet: zero); the parent's
    unwritten changes go with its values. Then the flushing thread starts."""
    global _counting
    _counting = True
    if _buffered:
        _buffered[0].get()
    for value in _buffered:
        value._written = value._value
    threading.Thread(target=_flush_periodically, name="pullcache-metric-files", daemon=True).start()


def flush() -> None:
    """Write every value that changed since the last flush to this process's file."""
    with _lock:
        if _counting:
            for value in _buffered:
                value.write()


def _flush_periodically() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        try:
            flush()
        except Exception:
            log.exception("writing the metric values to %s failed", os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _after_fork_in_child() -> None:
    """The child has changed nothing yet (its first change starts its file and thread), and the lock the fork
    copied held is released."""
    global _counting
    _counting = False
    _lock.release()
