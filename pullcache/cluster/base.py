"""The coordination interface the rest of pullcache programs against."""
from __future__ import annotations

from abc import ABC, abstractmethod


class CoordinationUnavailable(Exception):
    """The coordination service cannot be reached (Redis down): nobody can say who holds what right now."""


class Coordinator(ABC):
    """Named leases, each held by at most one holder at a time.

    A lease taken with a ttl lapses that long after its last renewal (Redis), or at once when its holder's
    process dies (embedded: the kernel drops the lock). acquire() by the current holder renews it.
    Every method may raise CoordinationUnavailable. Redis is connected to lazily, so a Redis that is
    down at start-up does not keep a process from starting.
    """

    @abstractmethod
    async def close(self) -> None:
        """Release what this process holds and disconnect."""

    @abstractmethod
    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease `key` for `holder` for `ttl` seconds; True if holder holds it now."""

    @abstractmethod
    async def renew(self, key: str, holder: str, ttl: float) -> bool:
        """Extend the lease by `ttl` seconds if `holder` still holds it; False if it does not."""

    @abstractmethod
    async def release(self, key: str, holder: str) -> bool:
        """Give the lease up if `holder` holds it; False (and nothing changes) if it does not."""

    @abstractmethod
    async def holder(self, key: str) -> str | None:
        """Who holds the lease now (what acquire() was given), None if nobody does: how a process finds the
        one doing the work it wants (the replica fetching a blob)."""
