"""Coordinators of both kinds, sharing leases as separate processes (or replicas) would: a fixture plugin for the
lease tests (`pytest_plugins = ["tests.support.coordinators"]`)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pullcache.cluster import Coordinator
from pullcache.cluster.embedded import EmbeddedCoordinator
from pullcache.cluster.redis_backend import RedisCoordinator

Make = Callable[[], Coordinator]


@pytest.fixture(params=["embedded", "redis"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """A factory of coordinators that share leases as separate processes (or replicas) would."""
    made: list[Coordinator] = []

    def factory() -> Coordinator:
        if request.param == "embedded":
            coordinator: Coordinator = EmbeddedCoordinator(tmp_path / "data")
        else:
            coordinator = RedisCoordinator(request.getfixturevalue("redis_server").redis_url)
        made.append(coordinator)
        return coordinator

    yield factory
    for coordinator in made:
        await coordinator.close()
