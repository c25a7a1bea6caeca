"""State the pull-through keeps beside the store: memos of what the store holds, and short-lived facts that
expire (a tag learned from a HEAD, an upstream 404). One process keeps them in memory (ProcessState);
replicas on one bucket keep the expiring facts in Redis with their ttl and hold no memo, so that each
answer is the shared one (RedisState). The pull-through asks the store's state and never learns which.

Redis down: an expiring fact is neither found nor kept (the upstream is asked, which is correct), said once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, MutableMapping
from typing import TypeVar

import redis.asyncio as aioredis
from cachetools import LRUCache, TTLCache
from redis.exceptions import RedisError

from pullcache.cluster.redis_pool import RedisTrouble, SharedRedis

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMap(ABC):
    """Text values under text keys, each forgotten `ttl` seconds after it was put."""

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def put(self, key: str, value: str) -> None: ...

    @abstractmethod
    async def pop(self, key: str) -> str | None: ...


class SharedState(ABC):
    @abstractmethod
    def memo(self, entries: int) -> MutableMapping[K, V]:
        """Where to remember what the store said, to skip asking again; empty when others change the store."""

    @abstractmethod
    def expiring(self, name: str, ttl: float, entries: int) -> ExpiringMap:
        """A map named `name`, the same one in every process sharing the state."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect."""


class _MemoryMap(ExpiringMap):
    def __init__(self, ttl: float, entries: int) -> None:
        self._values: TTLCache[str, str] = TTLCache(entries, ttl)

    async def get(self, key: str) -> str | None:
        return self._values.get(key)

    async def put(self, key: str, value: str) -> None:
        self._values[key] = value

    async def pop(self, key: str) -> str | None:
        return self._values.pop(key, None)


class ProcessState(SharedState):
    """One process owns the store: its memory is the truth about what it wrote."""

    def memo(self, entries: int) -> MutableMapping[K, V]:
        return LRUCache(entries)

    def expiring(self, name: str, ttl: float, entries: int) -> ExpiringMap:
        return _MemoryMap(ttl, entries)

    async def close(self) -> None:
        pass


class NoMemo(MutableMapping[K, V]):
    """Remembers nothing: another replica may change what it would remember at any moment."""

    def __getitem__(self, key: K) -> V:
        raise KeyError(key)

    def __setitem__(self, key: K, value: V) -> None:
        pass

    def __delitem__(self, key: K) -> None:
        raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _RedisMap(ExpiringMap):
    def __init__(self, client: aioredis.Redis, prefix: str, ttl: float, trouble: RedisTrouble) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        self._trouble = trouble

    async def _call(self, command: str, key: str, *args: object) -> str | None:
        try:
            value = await self._client.execute_command(command, self._prefix + key, *args)
        except RedisError as exc:
            self._trouble.failed(exc)
            return None
        self._trouble.answered()
        return value.decode() if isinstance(value, bytes) else None

    async def get(self, key: str) -> str | None:
        return await self._call("GET", key)

    async def put(self, key: str, value: str) -> None:
        await self._call("SET", key, value, "PX", self._ttl_ms)

    async def pop(self, key: str) -> str | None:
        return await self._call("GETDEL", key)


class RedisState(SharedState):
    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    def memo(self, entries: int) -> MutableMapping[K, V]:
        return NoMemo()

    def expiring(self, name: str, ttl: float, entries: int) -> ExpiringMap:
        return _RedisMap(self._redis.client, f"{self._redis.namespace}{name}:", ttl, self._redis.trouble)

    async def close(self) -> None:
        await self._redis.client.aclose()
