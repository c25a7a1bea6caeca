"""One way to open a Redis client for `cluster.redis`: a bounded, blocking connection pool (redis-py's default
pool fails beyond its size instead of waiting) with the timeouts that make a silent Redis count as down.
The limits are redis_backend's, so every client of pullcache's Redis behaves alike."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from pullcache.cluster.redis_backend import MAX_CONNECTIONS, POOL_WAIT, SOCKET_TIMEOUT


def redis_client(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client of `url`; close it with close_client()."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT,
        socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    return aioredis.Redis(connection_pool=pool)


async def close_client(client: aioredis.Redis) -> None:
    await client.aclose()
    await client.connection_pool.disconnect()


def redacted(url: str) -> str:
    """The URL without its password (`redis://:***@host:6379/0`): for logs, check-config and the status page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
