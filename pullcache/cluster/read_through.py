"""A read-through cache in Redis of what the bucket holds, shared by every replica and never ahead of it.

Writers change the bucket first and then invalidate (DEL) the entries their change affects; they never
write a value into Redis. Readers fill: a reader that misses registers a fill token in the entry (or takes
the one already there), reads the bucket, and stores what it read only if the token is still there. An
invalidation removes the token with the value, so a reader whose bucket read may predate a write cannot
store it: a value in Redis was read from the bucket after the last write to it completed. Two writers of
one file therefore leave Redis empty and the bucket with the last write, and the next read fills Redis
from the bucket: the bucket wins every race. After FLUSHALL or a restart the entries are simply missing
and refill as they are read.

Redis down: every read goes to the bucket (correct, slower), said once. An invalidation that could not
reach Redis is kept and retried before this process trusts Redis again, so a Redis that was only
unreachable does not keep serving what this process changed meanwhile.
"""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable

from redis.exceptions import RedisError

from pullcache.cluster.redis_pool import SharedRedis

VALUE_TTL_MS = 24 * 3600 * 1000  # a filled entry lives a day unless invalidated: Redis keeps the hot ones
TOKEN_TTL_MS = 60 * 1000         # a reader that died between its miss and its fill leaves nothing for long
PRESENT, ABSENT = b"+", b"-"      # a value is the file's bytes after PRESENT, or ABSENT: the bucket has none

# KEYS[1]: the entry, a hash {v: value, t: fill token}. ARGV: a new token, its ttl. -> {1, value} or {0, token}
_READ = """
local v = redis.call('HGET', KEYS[1], 'v')
if v then return {1, v} end
local t = redis.call('HGET', KEYS[1], 't')
if not t then
  t = ARGV[1]
  redis.call('HSET', KEYS[1], 't', t)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {0, t}
"""
# KEYS[1]: the entry. ARGV: the reader's token, the value read from the bucket, the value's ttl.
_FILL = """
if redis.call('HGET', KEYS[1], 't') == ARGV[1] and redis.call('HEXISTS', KEYS[1], 'v') == 0 then
  redis.call('HSET', KEYS[1], 'v', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

Loader = Callable[[], Awaitable[bytes | None]]


class ReadThrough:
    def __init__(self, redis: SharedRedis, namespace: str) -> None:
        self._client = redis.client
        self._namespace = namespace
        self._read = redis.client.register_script(_READ)
        self._fill = redis.client.register_script(_FILL)
        self._unflushed: set[str] = set()  # invalidations Redis has not taken yet
        self.trouble = redis.trouble

    def _key(self, name: str) -> str:
        return f"{self._namespace}{name}"

    async def _flush(self) -> None:
        """Retry the invalidations Redis missed; raises RedisError while it still cannot take them."""
        if self._unflushed:
            keys = list(self._unflushed)
            await self._client.delete(*keys)
            self._unflushed.difference_update(keys)

    async def get(self, name: str, load: Loader) -> bytes | None:
        """What the bucket holds for `name` (load() reads it there), from Redis when it has it."""
        key = self._key(name)
        try:
            await self._flush()
            found, value = await self._read(keys=[key], args=[secrets.token_hex(8), TOKEN_TTL_MS])
        except RedisError as exc:
            self.trouble.failed(exc)
            return await load()
        self.trouble.answered()
        if found:
            return None if value == ABSENT else bytes(value[1:])
        data = await load()
        try:
            await self._fill(keys=[key], args=[value, ABSENT if data is None else PRESENT + data, VALUE_TTL_MS])
        except RedisError as exc:
            self.trouble.failed(exc)
        return data

    async def invalidate(self, names: Iterable[str]) -> None:
        """After a write to the bucket: drop what Redis holds of `names`, with any reader's fill token."""
        keys = [self._key(name) for name in names]
        try:
            await self._flush()
            if keys:
                await self._client.delete(*keys)
        except RedisError as exc:
            self._unflushed.update(keys)
            self.trouble.failed(exc)
            return
        self.trouble.answered()
