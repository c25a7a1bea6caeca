"""One way to open a Redis client for `cluster.redis`: a bounded, blocking connection pool (redis-py's default
pool fails beyond its size instead of waiting) with the timeouts that make a silent Redis count as down.
Every Redis caller in pullcache (leases, shared state, members) opens its client here, so all behave alike."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

MAX_CONNECTIONS = 32
POOL_WAIT = 5.0  # seconds a caller waits for a free connection
SOCKET_TIMEOUT = 2.0  # a Redis that does not answer within this is down, for the caller


def redis_client(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client of `url` owning its pool: `await client.aclose()` disconnects both. It connects on first use,
    so a Redis that is down at start-up does not keep a process from starting."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT,
        socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    return aioredis.Redis.from_pool(pool)


def redacted(url: str) -> str:
    """The URL without its password (`redis://:***@host:6379/0`): for logs, check-config and the status page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
