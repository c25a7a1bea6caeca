"""Leases in Redis (`cluster.redis`), for replicas on several hosts.

Taking a lease is `SET key holder NX PX ttl`; renewing and releasing compare the holder first, in one Lua
script each, so a holder whose lease lapsed and was taken by another can neither extend nor delete the
new holder's. Redis errors become CoordinationUnavailable: callers decide what a lost Redis means.
The pool is bounded and blocking (redis-py's default pool fails beyond its size instead of waiting).
"""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pullcache.cluster.base import CoordinationUnavailable, Coordinator

KEY_PREFIX = "pullcache:lease:"
MAX_CONNECTIONS = 32
POOL_WAIT = 5.0  # seconds a caller waits for a free connection
SOCKET_TIMEOUT = 2.0  # a Redis that does not answer within this is down, for the caller

# Extend the lease only if this holder still has it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Delete the lease only if this holder still has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisCoordinator(Coordinator):
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT,
            socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    def _unavailable(self, exc: Exception) -> CoordinationUnavailable:
        return CoordinationUnavailable(f"cluster.redis: {exc}")

    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        try:
            if await self._client.set(KEY_PREFIX + key, holder, nx=True, px=_ms(ttl)):
                return True
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return await self.renew(key, holder, ttl)  # taken already: by this holder, acquiring is renewing

    async def renew(self, key: str, holder: str, ttl: float) -> bool:
        try:
            return bool(await self._renew(keys=[KEY_PREFIX + key], args=[holder, _ms(ttl)]))
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def release(self, key: str, holder: str) -> bool:
        try:
            return bool(await self._release(keys=[KEY_PREFIX + key], args=[holder]))
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def holder(self, key: str) -> str | None:
        try:
            value = await self._client.get(KEY_PREFIX + key)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.disconnect()
