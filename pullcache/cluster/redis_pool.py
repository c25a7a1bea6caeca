"""One Redis client per use, on the bounded, blocking pool the leases use (redis_backend's settings), so
every Redis caller in pullcache waits for a free connection instead of failing past the pool's size, and
gives up on a Redis that does not answer within the same timeout."""
from __future__ import annotations

import logging

import redis.asyncio as aioredis

from pullcache.cluster.redis_backend import MAX_CONNECTIONS, POOL_WAIT, SOCKET_TIMEOUT


def redis_client(url: str) -> aioredis.Redis:
    """A client owning its pool: `await client.aclose()` disconnects both. Connects on first use, so a
    Redis that is down at start-up does not keep a process from starting."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT,
        socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    return aioredis.Redis.from_pool(pool)


class RedisTrouble:
    """Says once that Redis cannot be reached and once that it answers again, whatever many callers notice:
    a caller falls back on the bucket (or its own memory) and the log does not repeat per request."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.down = False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            self._log.warning("cluster.redis unreachable (%s): %s; serving from the bucket meanwhile", exc, self._what)

    def answered(self) -> None:
        if self.down:
            self.down = False
            self._log.info("cluster.redis answers again: %s", self._what)
