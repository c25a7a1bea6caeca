"""LeaseKeeper: one lease this process wants for as long as it runs (e.g. `eviction`, whose holder runs the
background passes).

Every ttl/3 it tries to take the lease, or renews it while held. When the coordination service cannot be
reached it keeps a held lease until the ttl since its last renewal has passed (nobody else can have taken
it before then) and then lets it go; when the service is back it takes it again, also after Redis lost
its data. A holder that dies stops renewing, so its lease lapses within one ttl (embedded: at once).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from pullcache import metrics
from pullcache.cluster.base import CoordinationUnavailable, Coordinator
from pullcache.config import Config

log = logging.getLogger("pullcache.cluster")

LEASE_TTL = 10.0  # seconds a lease outlives its holder's last renewal (Redis)


def holder_id(config: Config) -> str:
    """This process among all others: its advertised address (or host name), its pid and a random part
    (a pid is reused after a restart)."""
    return f"{config.cluster.advertise or socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def address_of(holder: str) -> str:
    """The advertised address in a holder_id: where its process answers its peers."""
    return holder.rsplit("/", 2)[0]


class HeldLease:
    """A lease just taken for one piece of work (a fill), renewed every ttl/3 until released.

    A renewal that cannot reach the coordination service is retried at the next turn; one that finds the
    lease gone (lapsed, or Redis lost it) stops renewing and lets the work carry on: its result is the same
    whoever else starts the work meanwhile.
    """

    def __init__(self, coordinator: Coordinator, key: str, holder: str, ttl: float) -> None:
        self.coordinator = coordinator
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._task = asyncio.create_task(self._renew(), name=f"pullcache-lease-{key}")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not await self.coordinator.renew(self.key, self.holder, self.ttl):
                    log.warning("lost the %r lease while holding it: another process may do the same work", self.key)
                    return
            except CoordinationUnavailable as exc:
                log.debug("cannot renew the %r lease (%s): trying again", self.key, exc)

    async def release(self) -> None:
        """Stop renewing and release the lease; if that cannot be done now it lapses by itself."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.coordinator.release(self.key, self.holder)
        except CoordinationUnavailable as exc:
            log.debug("could not release the %r lease (%s): it lapses by itself", self.key, exc)


class LeaseKeeper:
    def __init__(self, coordinator: Coordinator, key: str, holder: str, ttl: float = LEASE_TTL, *,
                 on_taken: Callable[[], None] | None = None) -> None:
        self.coordinator = coordinator
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self.held = False
        self._on_taken = on_taken  # called each time this process becomes the holder
        self._valid_until = 0.0  # monotonic: when the lease lapses unless renewed
        self._trouble: str | None = None
        self._task: asyncio.Task[None] | None = None
        metrics.cluster_lease_held.labels(lease=key).set(0)

    def _set_held(self, held: bool) -> None:
        taken = held and not self.held
        if held != self.held:
            log.info("%s the %r lease (%s)", "took" if held else "no longer hold", self.key, self.holder)
        self.held = held
        metrics.cluster_lease_held.labels(lease=self.key).set(int(held))
        if taken and self._on_taken is not None:
            self._on_taken()

    async def step(self) -> bool:
        """Take or renew the lease once; whether this process holds it now."""
        started = time.monotonic()
        try:
            # A held lease that is gone (it lapsed, or Redis lost it) is taken again if nobody else has.
            ok = (self.held and await self.coordinator.renew(self.key, self.holder, self.ttl)) \
                or await self.coordinator.acquire(self.key, self.holder, self.ttl)
        except CoordinationUnavailable as exc:
            if str(exc) != self._trouble:
                log.warning("cannot take or renew the %r lease: %s; retrying every %gs", self.key, exc, self.ttl / 3)
                self._trouble = str(exc)
            self._set_held(self.held and time.monotonic() < self._valid_until)
            return self.held
        if self._trouble is not None:
            log.info("the %r lease can be taken and renewed again", self.key)
            self._trouble = None
        if ok:
            self._valid_until = started + self.ttl
        self._set_held(ok)
        return ok

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.step()

    async def start(self) -> None:
        """Try once now (what runs next knows whether it leads), then keep trying or renewing."""
        await self.step()
        self._task = asyncio.create_task(self._run(), name=f"pullcache-lease-{self.key}")

    async def stop(self) -> None:
        """Stop renewing and hand the lease on at once, rather than after its ttl."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.held:
            try:
                await self.coordinator.release(self.key, self.holder)
            except CoordinationUnavailable as exc:
                log.warning("could not release the %r lease (%s): it lapses by itself", self.key, exc)
        self._set_held(False)
