"""Leases in Redis (`cluster.redis`), for replicas on several hosts.

Taking a lease is `SET key holder NX PX ttl`; renewing and releasing compare the holder first, in one Lua
script each, so a holder whose lease lapsed and was taken by another can neither extend nor delete the
new holder's. Redis errors become CoordinationUnavailable: callers decide what a lost Redis means.
The client is cluster/redis_client.py's: a bounded, blocking pool.
"""
from __future__ import annotations

from redis.exceptions import RedisError

from pullcache.cluster.base import CoordinationUnavailable, Coordinator
from pullcache.cluster.redis_client import redis_client

KEY_PREFIX = "pullcache:lease:"

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
        self._client = redis_client(url)
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
