"""One way to open a Redis client for `cluster.redis`: a bounded, blocking connection pool (redis-py's default
pool fails beyond its size instead of waiting) with the timeouts that make a silent Redis count as down.
Every Redis caller in pullcache (leases, shared state, members) opens its client here, so all behave alike.

Its connections send under asyncio.timeout rather than redis-py's asyncio.wait_for: on Python 3.11 wait_for
returns the result and drops a cancellation that arrives as the send completes, so a cancelled request, or
a background loop being stopped, went on (a store's close then waited forever for its loop)."""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import TimeoutError as RedisTimeout

MAX_CONNECTIONS = 32
POOL_WAIT = 5.0  # seconds a caller waits for a free connection
SOCKET_TIMEOUT = 2.0  # a Redis that does not answer within this is down, for the caller


def redis_client(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client of `url` owning its pool: `await client.aclose()` disconnects both. It connects on first use,
    so a Redis that is down at start-up does not keep a process from starting."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT,
        socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    pool.connection_class = _cancellable(pool.connection_class)  # the class the URL's scheme chose
    return aioredis.Redis.from_pool(pool)


class _CancellableSend(AbstractConnection):
    """A connection whose sends a cancellation always stops (see the module's docstring)."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout, self.socket_timeout = self.socket_timeout, None  # None: redis-py writes without wait_for
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeout("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


_CANCELLABLE: dict[type[Any], type[Any]] = {}


def _cancellable(connection_class: type[Any]) -> type[Any]:
    """The connection class with _CancellableSend's send, made once per class."""
    if connection_class not in _CANCELLABLE:
        _CANCELLABLE[connection_class] = type(f"Cancellable{connection_class.__name__}",
                                              (_CancellableSend, connection_class), {})
    return _CANCELLABLE[connection_class]


def redacted(url: str) -> str:
    """The URL without its password (`redis://:***@host:6379/0`): for logs, check-config and the status page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
