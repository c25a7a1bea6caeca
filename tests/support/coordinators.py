"""Coordinators of both kinds, sharing leases as separate processes (or replicas) would: a fixture plugin for the
lease tests (`pytest_plugins = ["tests.support.coordinators"]`)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
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


_HOLD = """
import asyncio, sys
from pullcache.cluster.embedded import EmbeddedCoordinator
async def main():
    coordinator = EmbeddedCoordinator(sys.argv[1])
    assert await coordinator.acquire(sys.argv[2], sys.argv[3], 30)
    print("held", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def hold_in_child(data_dir: Path, key: str, holder: str) -> asyncio.subprocess.Process:
    """Another process holding the embedded lease `key` as `holder`, returned once it holds it; kill it."""
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _HOLD, str(data_dir), key, holder,
                                                 stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert await child.stdout.readline() == b"held\n"
    return child
