"""One upstream manifest exchange per reference across processes sharing a store (replicas, workers).

Within a process, concurrent requests for one reference already share one exchange (SingleFlight). Across
processes the one that starts it takes the lease `manifest/<upstream>/<repository>/<reference>/<get|head>`
through the cluster's Coordinator; another process that finds it taken waits for it to be let go and then
answers from what the holder left in the shared store (the tag's digest and confirmation, the manifest's
bytes, or a remembered 404). Nothing has to be streamed between processes: a manifest is small and the
holder stores it before it lets go. A holder that dies lets its lease lapse (at once on one host, within
LEASE_TTL with Redis), and a waiter that finds nothing after it does the exchange itself. Coordination that
cannot be reached never fails a request: the exchange is then made without a lease.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pullcache.cluster import CoordinationUnavailable, Coordinator, HeldLease

LEASE_TTL = 5.0  # seconds a dead holder's lease outlives it in Redis (flock: none)
POLL = 0.05  # between looks at a lease another process holds: a manifest exchange takes tens of ms
T = TypeVar("T")


class ManifestLeases:
    def __init__(self, coordinator: Coordinator, holder: str) -> None:
        self._coordinator = coordinator
        self._holder = holder

    async def run(self, key: str, work: Callable[[], Awaitable[T]],
                  settled: Callable[[], Awaitable[T | None]]) -> tuple[T, bool]:
        """`work` under the lease `key`, or what `settled` finds once another holder let it go; the answer
        and whether this process did the work."""
        deadline = time.monotonic() + LEASE_TTL + 1.0
        while True:
            try:
                taken = await self._coordinator.acquire(key, self._holder, LEASE_TTL)
            except CoordinationUnavailable:
                return await work(), True
            if taken:
                lease = HeldLease(self._coordinator, key, self._holder, LEASE_TTL)
                try:
                    return await work(), True
                finally:
                    await lease.release()
            if not await self._let_go(key, deadline):
                return await work(), True  # a holder that keeps the lease and does nothing: ask ourselves
            found = await settled()
            if found is not None:
                return found, False

    async def _let_go(self, key: str, deadline: float) -> bool:
        """Wait until nobody holds `key`; False if that did not happen by the deadline."""
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            try:
                if await self._coordinator.holder(key) is None:
                    return True
            except CoordinationUnavailable:
                return True  # nobody can say: look at the store, then do the work
        return False
