"""A worker's stop signals (`workers: N`): the first SIGTERM or SIGINT stops it gracefully, the later ones are
ignored, and none kills it.

Under systemd every process of the service gets SIGTERM and the supervisor passes its own on, so a worker
gets several. Its handlers are Python-level ones installed before its event loop runs, not the loop's:
removing a loop's handler (closing the loop does) puts the default action back for a moment, and a SIGTERM
passed on by the supervisor killed a worker there. A signal that comes while the worker starts is kept
until it serves: aiohttp's start-up cannot be interrupted without skipping the clean-up of what it opened.
The loop wakes for a signal as the main thread takes it (Linux gives a process's signals to its main
thread while that thread accepts them), or through the loop's wakeup fd when it watches SIGHUP.
"""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Install on the worker's loop before it runs; call `serving()` on the loop once the worker serves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._received = False
        self._serving = False
        self._stopping = False
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
            signal.siginterrupt(signum, False)  # as the loop's handlers: no EINTR in other threads' calls

    def _on_signal(self, _signum: int, _frame: object) -> None:
        if self._received:
            return
        self._received = True
        if self._serving and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop)

    def serving(self) -> None:
        """The worker serves: a signal it got while starting stops it now."""
        self._serving = True
        if self._received:
            self._loop.call_soon(self._stop)

    def ignore(self) -> None:
        """From now on the stop signals do nothing (the worker is ending)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _stop(self) -> None:
        if not self._stopping:  # once: a second GracefulExit would cut the first's graceful shutdown short
            self._stopping = True
            self.ignore()
            raise web.GracefulExit()
