"""Stores of replicas on one bucket prefix with Redis, opened in the test's process: the index, repository
files and shared state as two replicas see them, without their servers."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullcache.cache.configured import store_for
from pullcache.cache.store import Store
from pullcache.config import Config, build_config

from . import seaweed
from .redis import RedisServer
from .seaweed import SeaweedFS


def replica_config(server: SeaweedFS, tmp_path: Path, prefix: str, redis_url: str, name: str) -> Config:
    """Replica `name`'s config: its own storage.path under tmp_path, the bucket prefix and Redis shared."""
    return build_config({
        "storage": {"path": str(tmp_path / name), "backend": "s3",
                    "s3": server.storage_config(seaweed.BUCKET, prefix=prefix, timeout="5s")},
        "cluster": {"redis": redis_url}, "local": {"anonymous_push": True}})


@pytest.fixture
async def stores(seaweed_server: SeaweedFS, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Two replicas' stores on one bucket prefix and the session's Redis."""
    prefix = f"t{os.urandom(6).hex()}"
    opened = []
    for name in ("a", "b"):
        config = replica_config(seaweed_server, tmp_path, prefix, redis_server.redis_url, name)
        store = store_for(config.storage, config.cluster)
        await store.open()
        opened.append(store)
    yield opened
    for store in opened:
        await store.close()
