"""Leases behind pullcache.cluster's one interface, against both implementations: embedded (flock under
storage.path) and Redis (a real redis-server on loopback)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pullcache.cluster import CoordinationUnavailable, Coordinator, LeaseKeeper
from pullcache.cluster.embedded import EmbeddedCoordinator
from pullcache.cluster.redis_backend import RedisCoordinator
from tests.support.coordinators import Make, hold_in_child
from tests.support.redis import RedisServer

pytest_plugins = ["tests.support.coordinators"]


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A lease name of this test's own: the session's Redis is shared."""
    return f"test/{request.node.name}"


async def test_only_one_holder_acquires(make: Make, key: str) -> None:
    a, b = make(), make()
    assert await a.acquire(key, "a", 30)
    assert not await b.acquire(key, "b", 30)
    assert await a.acquire(key, "a", 30), "acquiring a lease one holds already renews it"


async def test_only_the_holder_renews(make: Make, key: str) -> None:
    a, b = make(), make()
    assert await a.acquire(key, "a", 1)
    assert await a.renew(key, "a", 30)
    assert not await b.renew(key, "b", 30)
    await asyncio.sleep(1.5)  # past the first ttl: the renewal must have extended it
    assert not await b.acquire(key, "b", 30)


async def test_only_the_holder_releases(make: Make, key: str) -> None:
    a, b = make(), make()
    assert await a.acquire(key, "a", 30)
    assert not await b.release(key, "b")
    assert not await b.acquire(key, "b", 30)
    assert await a.release(key, "a")
    assert await b.acquire(key, "b", 30)


async def _acquired_within(coordinator: Coordinator, key: str, holder: str, seconds: float) -> float | None:
    """Seconds until `holder` got the lease, trying every 50 ms; None if not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await coordinator.acquire(key, holder, 30):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def test_embedded_lease_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    child = await hold_in_child(tmp_path / "data", "eviction", "child")
    coordinator = EmbeddedCoordinator(tmp_path / "data")
    try:
        assert not await coordinator.acquire("eviction", "parent", 30)
        child.kill()  # SIGKILL: no chance to release anything
        await child.wait()
        assert await _acquired_within(coordinator, "eviction", "parent", 2.0) is not None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await coordinator.close()


async def test_redis_lease_lapses_when_its_holder_stops_renewing(redis_server: RedisServer, key: str) -> None:
    holder, other = RedisCoordinator(redis_server.redis_url), RedisCoordinator(redis_server.redis_url)
    try:
        assert await holder.acquire(key, "dead", 1.0)
        await holder.close()  # it never renews: as if its process died
        assert not await other.acquire(key, "next", 30)
        waited = await _acquired_within(other, key, "next", 3.0)
        assert waited is not None and waited > 0.5
    finally:
        await other.close()


async def test_lease_keeper_hands_over_when_stopped(make: Make, key: str) -> None:
    first = LeaseKeeper(make(), key, "first", ttl=30)
    second = LeaseKeeper(make(), key, "second", ttl=30)
    assert await first.step()
    assert not await second.step()
    await first.stop()
    assert not first.held
    assert await second.step()


async def test_redis_outage_neither_crashes_nor_keeps_a_lease_past_its_ttl() -> None:
    redis = RedisServer().start()
    coordinator = RedisCoordinator(redis.redis_url)
    keeper = LeaseKeeper(coordinator, "eviction", "me", ttl=1.5)
    try:
        assert await keeper.step()
        redis.stop()
        with pytest.raises(CoordinationUnavailable):
            await coordinator.renew("eviction", "me", 1.5)
        assert await keeper.step(), "within the ttl of the last renewal the holder keeps working"
        await asyncio.sleep(1.6)
        assert not await keeper.step(), "past it another replica may hold it: this one lets go"
        redis.start()  # empty: Redis lost every lease
        assert await keeper.step(), "coordination resumes without a restart"
    finally:
        await keeper.stop()
        await coordinator.close()
        redis.close()
