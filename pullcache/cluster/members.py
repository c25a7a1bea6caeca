"""Membership: which pullcache processes serve this store now, and whether coordination works.

Every serving process (a replica, or a worker of `workers: N`) announces itself every HEARTBEAT seconds to a
roster all of them share, and reads the roster back in the same step:
- Redis (`cluster.redis`): a sorted set of member -> last heartbeat (Redis's clock, so hosts' clocks do not
  matter); entries older than LAPSE are dropped by whoever beats next, so a killed replica leaves within
  LAPSE + HEARTBEAT. A heartbeat that fails means Redis is down: coordination is degraded until one works
  again, with no restart, and a Redis that lost its data is refilled by the next heartbeats.
- embedded (no Redis, one host): a locked file per process under storage.path (members_embedded.py); the
  kernel drops a dead process's lock at once.
A clean stop leaves the roster at once. /readyz and the two metrics report the last heartbeat's view, so a
probe never waits on Redis; the status page beats once more to show the roster as it is now.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from pullcache import metrics
from pullcache.cluster.base import CoordinationUnavailable
from pullcache.cluster.lease import holder_id
from pullcache.config import Config

log = logging.getLogger("pullcache.cluster")

HEARTBEAT = 2.0  # seconds between announcements
LAPSE = 3 * HEARTBEAT  # a member not heard from for this long is gone
BEAT_TIMEOUT = 2 * HEARTBEAT  # a heartbeat that takes longer failed: coordination is degraded


@dataclass(frozen=True)
class Member:
    id: str  # unique per process run (cluster.lease.holder_id)
    address: str | None  # cluster.advertise: how peers reach it
    host: str
    pid: int
    seen_ago: float = 0.0  # seconds between its last heartbeat and the roster's reading

    def info(self) -> dict[str, object]:
        """What the roster keeps of it besides its id and heartbeat."""
        return {"address": self.address, "host": self.host, "pid": self.pid}

    @classmethod
    def from_info(cls, member_id: str, info: dict[str, object], seen_ago: float) -> Member:
        address, host, pid = info.get("address"), info.get("host"), info.get("pid")
        return cls(member_id, address if isinstance(address, str) else None, str(host or "?"),
                   pid if isinstance(pid, int) else 0, seen_ago)


class Roster(ABC):
    """Where members announce themselves. Methods raise CoordinationUnavailable when it cannot be used."""

    kind: str  # "redis" or "embedded", for the status page and check-config
    where: str  # the redacted Redis URL or the directory

    @abstractmethod
    async def announce(self, me: Member) -> list[Member]:
        """Record `me` as alive now, drop members not heard from within LAPSE, and return the live ones."""

    @abstractmethod
    async def leave(self, me: Member) -> None:
        """Remove `me` at once (a clean stop)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect."""


@dataclass(frozen=True)
class ClusterView:
    """What the last heartbeat saw: the members (kept from the last good one while coordination is down) and
    why coordination is degraded (None: ok)."""

    kind: str
    where: str
    members: tuple[Member, ...] = ()
    problem: str | None = None
    at: float = 0.0  # time.time() of the last good heartbeat

    @property
    def coordination(self) -> str:
        return "ok" if self.problem is None else "degraded"


class Membership:
    """This process's heartbeat: keeps it on the roster and `view` current, and the metrics with it."""

    def __init__(self, roster: Roster, me: Member, heartbeat: float = HEARTBEAT) -> None:
        self.roster = roster
        self.me = me
        self.heartbeat = heartbeat
        self.view = ClusterView(roster.kind, roster.where, problem="not announced yet")
        self._task: asyncio.Task[None] | None = None
        self._beating = asyncio.Lock()  # one heartbeat at a time: a page view's and the loop's

    async def beat(self) -> ClusterView:
        """Announce once and read the roster; a failure degrades the view instead of raising."""
        async with self._beating:
            return await self._beat()

    async def _beat(self) -> ClusterView:
        try:
            async with asyncio.timeout(BEAT_TIMEOUT):  # not wait_for: on 3.11 it can drop a cancellation
                seen = await self.roster.announce(self.me)
        except (CoordinationUnavailable, TimeoutError) as exc:
            problem = str(exc) or f"{self.roster.kind}: no answer within {BEAT_TIMEOUT:g}s"
            if problem != self.view.problem:
                log.warning("coordination degraded: %s; retrying every %gs", problem, self.heartbeat)
            self.view = dataclasses.replace(self.view, problem=problem)
        else:
            if self.view.problem is not None and self.view.at:
                log.info("coordination ok again (%s)", self.roster.where)
            self.view = ClusterView(self.roster.kind, self.roster.where, tuple(seen), None, time.time())
        metrics.cluster_members.set(len(self.view.members))
        metrics.cluster_coordination_up.set(int(self.view.problem is None))
        return self.view

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self.beat()

    async def start(self) -> None:
        """Announce now (the first /readyz already knows), then every heartbeat."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="pullcache-membership")

    async def stop(self) -> None:
        """Stop beating and leave the roster at once, rather than after LAPSE."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(CoordinationUnavailable):
            await self.roster.leave(self.me)
        await self.roster.close()


def store_scope(config: Config) -> str:
    """The store the members share: one roster per bucket and prefix, or per host and path."""
    if config.storage.backend == "s3":
        from pullcache.cache.configured import where
        return where(config.storage.s3)
    return f"file://{socket.gethostname()}{os.path.abspath(config.storage.path)}"


def open_membership(config: Config) -> Membership:
    """Redis when `cluster.redis` is set, else the embedded roster on storage.path."""
    me = Member(holder_id(config), config.cluster.advertise, socket.gethostname(), os.getpid())
    roster: Roster
    if config.cluster.redis:
        from pullcache.cluster.members_redis import RedisRoster
        roster = RedisRoster(config.cluster.redis, store_scope(config))
    else:
        from pullcache.cluster.members_embedded import FileRoster
        roster = FileRoster(config.storage.path)
    return Membership(roster, me)
