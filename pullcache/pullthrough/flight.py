"""Single-flight: concurrent callers asking for the same key share one run of the work.

The work runs in its own task, so a caller that goes away (a client disconnect cancels its
handler) does not cancel it for the others, and what it stores still lands in the cache.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The work's result (or its exception) and whether this caller started it."""
        task = self._running.get(key)
        leader = task is None
        if task is None:
            task = asyncio.get_running_loop().create_task(work())  # type: ignore[arg-type]
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), leader

    def _finished(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller went away

    async def close(self) -> None:
        """Cancel work still running (shutdown)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
