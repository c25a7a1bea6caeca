"""Which process fetches a blob when several share a store: the one holding the fill's lease.

Before a process fetches a blob from its upstream it takes the lease `fill/<upstream>/<digest>` through the
cluster's Coordinator (pullcache.cluster: flock on one host, Redis across hosts), naming itself by its
`cluster.advertise` address, and keeps it until the fill ended. A process that finds the lease taken asks its
holder for the growing fill instead (peer_client.py) and relays it to its own clients. A lease whose holder
died lapses (at once on one host, within LEASE_TTL with Redis), and the next request takes it.

Coordination that cannot be reached (Redis down) must not fail a request: the blob is then fetched without a
lease, so processes no longer share fetches, only the requests within each do. That is said once per outage.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pullcache.cluster import CoordinationUnavailable, Coordinator, HeldLease, address_of, holder_id
from pullcache.cluster.secret import peer_signing_key
from pullcache.cluster.signing import RequestSigner
from pullcache.config import Config, ConfigError
from pullcache.digests import Digest
from pullcache.pullthrough.peer_client import PeerClient, PeerStream, PeerUnavailable

log = logging.getLogger("pullcache.cluster")

LEASE_TTL = 5.0  # seconds a dead holder's fill lease outlives it in Redis (flock: none)
RETRY_PAUSE = 0.1  # between looks at a lease whose holder serves no fill yet, or no longer


@dataclass(frozen=True)
class Lead:
    """Fetch from the upstream: under the lease (released once the fill ended), or without one (None)."""

    lease: HeldLease | None


@dataclass(frozen=True)
class Follow:
    """Relay the fill another process (holder) runs."""

    stream: PeerStream
    holder: str


@dataclass(frozen=True)
class Stored:
    """The blob was committed meanwhile, by another process: serve it from the store."""


Claim = Lead | Follow | Stored
Check = Callable[[], Awaitable[bool]]


def fill_key(upstream: str, digest: Digest) -> str:
    return f"fill/{upstream}/{digest}"


class FillLeases:
    def __init__(self, coordinator: Coordinator, holder: str, peers: PeerClient) -> None:
        self._coordinator = coordinator
        self.holder = holder
        self._peers = peers
        self._trouble: str | None = None  # the coordination error of the outage going on, said once

    async def claim(self, upstream: str, digest: Digest, stored: Check) -> Claim:
        """Take the fill's lease, or find the process holding it and open its fill.

        `stored` says whether the blob is committed: asked after the lease was taken, since the holder
        that just let it go committed it first. A holder that neither serves the fill nor lets the lease go
        within LEASE_TTL (it died, and Redis keeps its lease that long) is given up on: fetch without a lease.
        """
        key = fill_key(upstream, digest)
        deadline = time.monotonic() + LEASE_TTL + 1.0
        while True:
            try:
                if await self._coordinator.acquire(key, self.holder, LEASE_TTL):
                    self._coordination_back()
                    return await self._lead(HeldLease(self._coordinator, key, self.holder, LEASE_TTL), stored)
                holder = await self._coordinator.holder(key)
            except CoordinationUnavailable as exc:
                self._coordination_lost(exc)
                return Lead(None)
            self._coordination_back()
            if holder is not None and holder != self.holder:
                try:
                    stream = await self._peers.open(address_of(holder), upstream, digest)
                except PeerUnavailable as exc:
                    log.debug("fill of %s: its lease holder %s cannot stream it: %s", digest, holder, exc)
                else:
                    if stream is not None:
                        return Follow(stream, holder)
            if time.monotonic() >= deadline:
                log.warning("fill of %s: the lease holder %s serves no fill and keeps the lease; fetching it "
                            "here as well", digest, holder)
                return Lead(None)
            await asyncio.sleep(RETRY_PAUSE)

    async def watch(self, upstream: str, digest: Digest, follow: Follow, stored: Check) -> None:
        """Cut the relay (follow.stream.cut) once its holder no longer holds the fill's lease while the blob is
        not stored: it died or hangs mid-fill, with its connection still open (a host gone without a word, a
        stopped process). Looks every LEASE_TTL / 2 until cancelled; an unreachable coordinator proves nothing."""
        key = fill_key(upstream, digest)
        while True:
            await asyncio.sleep(LEASE_TTL / 2)
            try:
                if await self._coordinator.holder(key) == follow.holder:
                    continue
            except CoordinationUnavailable:
                continue
            if not await stored():  # the holder commits before it lets go: it did not
                follow.stream.cut(f"{follow.holder} no longer holds the lease of {digest}, which it did not commit")
            return

    @staticmethod
    async def _lead(lease: HeldLease, stored: Check) -> Claim:
        try:
            if not await stored():
                return Lead(lease)
        except BaseException:
            await lease.release()
            raise
        await lease.release()
        return Stored()

    def _coordination_lost(self, exc: CoordinationUnavailable) -> None:
        if self._trouble is None:
            log.warning("coordination unavailable (%s): blobs are fetched without a lease, shared only by the "
                        "requests of this process, until it is back", exc)
        self._trouble = str(exc)

    def _coordination_back(self) -> None:
        if self._trouble is not None:
            log.info("coordination is back: fills are shared across processes again")
            self._trouble = None

    async def close(self) -> None:
        await self._peers.close()


def fill_leases(config: Config, coordinator: Coordinator) -> FillLeases | None:
    """Cross-process fills when `cluster.advertise` says how peers reach this process; None (no lease traffic
    at all) without it. Raises ConfigError when there is no cluster secret to sign peer requests with."""
    if config.cluster.advertise is None:
        return None
    key = peer_signing_key(config.cluster)
    if key is None:
        raise ConfigError("cluster.secret_env: must be set with cluster.advertise (requests between processes "
                          "are signed with the cluster secret)")
    return FillLeases(coordinator, holder_id(config), PeerClient(RequestSigner(key)))
