"""Eviction and GC of replicas on one bucket: the blob index lives in Redis (cache/redis_index.py), so the
holder of the `eviction` lease bounds the whole bucket's cached content by storage.max_size, and every replica's
pullcache_store_* gauges show the cluster's totals."""
from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis

from pullcache.cache.configured import store_for
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from pullcache.cluster.embedded import EmbeddedCoordinator
from pullcache.config import Config, build_config
from pullcache.eviction.lru import Evicted
from pullcache.eviction.service import EvictionService
from tests.support import seaweed
from tests.support.pullcache_proc import PullcacheProcess
from tests.support.redis import RedisServer
from tests.support.registry_client import RegistryClient
from tests.support.replicas import running_cluster
from tests.support.seaweed import SeaweedFS
from tests.support.seed import ADMIN_PASSWORD, ADMIN_USER, Upstream

BLOB = 10_000  # bytes per cached blob
BLOBS = 12
SHARES = [0] * 6 + [1] * 4 + [2] * 2  # the replica each blob is pulled through
MAX_SIZE = 5 * BLOB + BLOB // 2  # 5.5 blobs' worth: the twelve go over it
CONFIG = {"storage": {"max_size": MAX_SIZE, "low_water": 0.9}, "gc": {"interval": "1s"},
          "local": {"anonymous_push": True}}
SETTLE_SECONDS = 30.0  # the replicas re-read the totals every 5 s (eviction/service.py FLUSH_INTERVAL)


def metric(replica: PullcacheProcess, name: str) -> float:
    with urllib.request.urlopen(f"{replica.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Callable[[], bool], what: str, seconds: float = SETTLE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.2)


def bucket_blobs(seaweed_server: SeaweedFS, prefix: str) -> dict[str, int]:
    """The blobs the bucket holds under the cluster's prefix: key -> size."""
    pages = seaweed.client(seaweed_server.url).get_paginator("list_objects_v2").paginate(
        Bucket=seaweed.BUCKET, Prefix=f"{prefix}/blobs/")
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


async def test_gc_and_eviction_run_once_across_three_replicas(
        upstream: Upstream, seaweed_server: SeaweedFS, tmp_path: Path) -> None:
    repo = f"evict/fill-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    digests = [client.upload_blob(repo, os.urandom(BLOB)) for _ in range(BLOBS)]
    with running_cluster(tmp_path / "cluster", upstream_url=upstream.url, seaweed_server=seaweed_server,
                         config=CONFIG) as cluster:
        replicas = cluster.replicas
        async with aiohttp.ClientSession() as session:
            for n, digest in enumerate(digests):  # through unequal shares: a replica's own view is not the total
                async with session.get(f"{replicas[SHARES[n]].url}/v2/{repo}/blobs/{digest}") as response:
                    assert response.status == 200
                    assert len(await response.read()) == BLOB

        def held(replica: PullcacheProcess) -> bool:
            return metric(replica, 'pullcache_cluster_lease_held{lease="eviction"}') == 1

        def cached_gauges() -> set[tuple[float, float]]:
            return {(metric(r, 'pullcache_store_bytes{origin="cached"}'),
                     metric(r, 'pullcache_store_blobs{origin="cached"}')) for r in replicas}

        def settled() -> bool:
            gauges = cached_gauges()
            return len(gauges) == 1 and next(iter(gauges))[0] <= MAX_SIZE

        await asyncio.to_thread(wait_for, settled, "every replica showing the same cached totals, under max_size")
        (leader,) = [replica for replica in replicas if held(replica)]
        stored = await asyncio.to_thread(bucket_blobs, seaweed_server, cluster.prefix)
        ((cached_bytes, cached_blobs),) = cached_gauges()
        evictions = sum(metric(replica, "pullcache_evictions_total") for replica in replicas)
        await asyncio.to_thread(wait_for, lambda: metric(leader, "pullcache_gc_runs_total") >= 2, "two GC runs")
        gc_runs = {replica.url: metric(replica, "pullcache_gc_runs_total") for replica in replicas}

    assert sum(stored.values()) <= MAX_SIZE
    assert (cached_bytes, cached_blobs) == (sum(stored.values()), len(stored))
    assert evictions == BLOBS - len(stored) > 0
    assert [url for url, runs in gc_runs.items() if runs > 0] == [leader.url]


async def test_after_redis_loses_its_data_the_leader_rebuilds_the_index_while_the_replicas_serve(
        upstream: Upstream, seaweed_server: SeaweedFS, tmp_path: Path) -> None:
    repo = f"evict/rebuild-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(upstream.url, username=ADMIN_USER, password=ADMIN_PASSWORD)
    digests = [client.upload_blob(repo, os.urandom(BLOB)) for _ in range(3)]
    config = {"gc": {"interval": 0}, "local": {"anonymous_push": True}}  # no GC: its reconcile would rebuild too
    with running_cluster(tmp_path / "cluster", upstream_url=upstream.url, seaweed_server=seaweed_server,
                         config=config) as cluster:
        replicas = cluster.replicas
        async with aiohttp.ClientSession() as session:
            for n, digest in enumerate(digests):
                async with session.get(f"{replicas[n].url}/v2/{repo}/blobs/{digest}") as response:
                    assert response.status == 200
        RegistryClient(replicas[1].url).upload_blob("team/app", os.urandom(BLOB // 2))  # a pushed blob

        def gauges(replica: PullcacheProcess) -> tuple[float, ...]:
            return tuple(metric(replica, f'pullcache_store_{what}{{origin="{origin}"}}')
                         for origin in ("cached", "pushed") for what in ("bytes", "blobs"))
        expected = (3 * BLOB, 3, BLOB // 2, 1)
        await asyncio.to_thread(wait_for, lambda: all(gauges(r) == expected for r in replicas), "the totals")

        redis.Redis.from_url(cluster.redis.redis_url).flushall()  # a Redis restarted without persistence
        async with aiohttp.ClientSession() as session:  # the replicas go on serving
            async with session.get(f"{replicas[2].url}/v2/{repo}/blobs/{digests[0]}") as response:
                assert response.status == 200

        await asyncio.to_thread(wait_for, lambda: any("rebuilding it from the blobs" in r.log_text() for r in replicas),
                                "the leader rebuilding the index")
        await asyncio.to_thread(wait_for, lambda: all(gauges(r) == expected for r in replicas),
                                "every replica showing the rebuilt totals, the pushed blob as pushed")


def replica(seaweed_server: SeaweedFS, redis_server: RedisServer, tmp_path: Path, prefix: str, name: str) -> Config:
    """A replica's config: its own storage.path, the cluster's bucket prefix and Redis."""
    return build_config({
        "storage": {"path": str(tmp_path / name), "backend": "s3", "max_size": 10**9,
                    "s3": seaweed_server.storage_config(seaweed.BUCKET, prefix=prefix, timeout="5s")},
        "cluster": {"redis": redis_server.redis_url}, "local": {"anonymous_push": True}})


async def test_with_the_s3_backend_a_nearly_full_storage_path_evicts_nothing(
        seaweed_server: SeaweedFS, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """storage.path holds only the spool and a local cache of its own bound: evicting from the bucket would not
    free it, so a nearly full one asks for no eviction pass."""
    config = replica(seaweed_server, redis_server, tmp_path, f"t{os.urandom(6).hex()}", "a")
    store: Store = store_for(config.storage, config.cluster)
    await store.open()
    try:
        service = EvictionService(store, config, EmbeddedCoordinator(config.storage.path))
        digest = await store.put_small(os.urandom(1000), origin=CACHED)

        async def nearly_full() -> tuple[int, int]:  # a reserve (5%) of 500 bytes: the cached blob would do
            return 0, 10_000
        monkeypatch.setattr(store, "free_space", nearly_full)
        await service.tick()

        assert await service.evict_now() == Evicted(0, 0)
        assert await store.blob_row(digest) is not None
    finally:
        await store.close()


async def test_no_replica_start_up_reconciles_the_shared_index(
        seaweed_server: SeaweedFS, redis_server: RedisServer, tmp_path: Path) -> None:
    """A replica starting beside a running one (whose in-use flag is in the shared index), or after a cluster-wide
    crash, must not list the whole bucket: the eviction leader rebuilds an index lost or never built, and its
    GC reconciles the rest."""
    prefix = f"t{os.urandom(6).hex()}"
    services: list[EvictionService] = []
    stores: list[Store] = []
    try:
        for name in ("a", "b"):
            config = replica(seaweed_server, redis_server, tmp_path, prefix, name)
            store = store_for(config.storage, config.cluster)
            await store.open()
            stores.append(store)
            service = EvictionService(store, config, EmbeddedCoordinator(config.storage.path))
            await service.start()
            services.append(service)

        assert [service.reconciling for service in services] == [None, None]
    finally:
        for service in services:
            await service.stop()
        for store in stores:
            await store.close()
