"""Replicas on one bucket with one Redis (`cluster.redis`) see one set of repositories and tags: two
in-process pullcache apps on the session's SeaweedFS (a fresh prefix each test) and Redis, each with its
own storage.path, in front of the seeded Distribution upstream.

Upstream requests are counted with pullcache_upstream_requests_total of this test's upstream (a name of
its own): both apps run in this process, so the counter is the cluster's total.

A replica lists the bucket's blobs when it opens, and seeing a blob another replica committed since is
the shared index's business (issue #10), not the repositories': a test that pulls a pushed image through
the second replica opens it after the first one committed the blobs.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from pullcache.api.appkeys import CONFIG, STORE
from pullcache.app import build_app
from pullcache.cache import bucket_files
from pullcache.cache.configured import store_for
from pullcache.config import build_config
from pullcache.eviction.gc import collect_garbage
from pullcache.metrics import REGISTRY
from tests.registry_api import image_manifest, push_blob, push_image, push_manifest, sha256
from tests.support import seaweed
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedFS
from tests.support.seed import Upstream
from tests.test_api_referrers import SBOM, push_artifact, referrers

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])

Replica = Callable[[], Awaitable[TestClient]]


@pytest.fixture
def upstream_name() -> str:
    return f"up{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster_redis(redis_server: RedisServer) -> str:
    return redis_server.redis_url


@pytest.fixture
def replica(aiohttp_client: Any, seaweed_server: SeaweedFS, upstream: Upstream, tmp_path: Path,
            upstream_name: str, cluster_redis: str) -> Replica:
    """`await replica()`: one more pullcache app on the test's bucket prefix and Redis."""
    prefix = f"t{os.urandom(6).hex()}"
    started: list[TestClient] = []

    async def start() -> TestClient:
        config = build_config({
            "storage": {"path": str(tmp_path / f"replica{len(started)}"), "backend": "s3",
                        "s3": seaweed_server.storage_config(seaweed.BUCKET, prefix=prefix, timeout="5s")},
            "cluster": {"redis": cluster_redis},
            "local": {"anonymous_push": True},
            "upstreams": [{"name": upstream_name, "url": upstream.url, "token_hosts": ["127.0.0.1"],
                           "manifest_ttl": "1h", "not_found_ttl": "1h"}],
        })
        client = await aiohttp_client(build_app(config))
        started.append(client)
        return client
    return start


@pytest.fixture
async def redis(cluster_redis: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(cluster_redis)
    yield client
    await client.aclose()


def upstream_requests(upstream_name: str) -> float:
    """Every request this test's upstream was sent, by any replica (token requests are not counted here)."""
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "pullcache_upstream_requests"
               for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels.get("upstream") == upstream_name)


async def manifest(client: TestClient, name: str, reference: str, method: str = "GET") -> tuple[int, str, bytes]:
    async with client.request(method, f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}) as got:
        return got.status, got.headers.get("Docker-Content-Digest", ""), await got.read()


async def blob(client: TestClient, name: str, digest: str) -> tuple[int, bytes]:
    async with client.get(f"/v2/{name}/blobs/{digest}") as got:
        return got.status, await got.read()


async def tags(client: TestClient, name: str) -> list[str]:
    async with client.get(f"/v2/{name}/tags/list") as got:
        assert got.status == 200, await got.text()
        return sorted((await got.json())["tags"])


# ---------------------------------------------------------------------- pushed repositories

async def test_an_image_pushed_through_one_replica_is_pulled_through_the_other(replica: Replica) -> None:
    a = await replica()
    config, layer = b'{"architecture": "amd64", "os": "linux"}', os.urandom(4096)
    for data in (config, layer):
        await push_blob(a, "team/app", data)
    b = await replica()  # opened before the manifest, its tag and every link but the blobs' are written
    document = image_manifest(config, [layer])
    digest = await push_manifest(a, "team/app", "v1", document, OCI_MANIFEST)

    assert await manifest(b, "team/app", "v1") == (200, digest, document)
    assert await tags(b, "team/app") == ["v1"]
    for data in (config, layer):
        assert await blob(b, "team/app", sha256(data)) == (200, data)


async def test_a_manifest_put_on_one_replica_finds_the_blobs_uploaded_through_another(replica: Replica) -> None:
    """A client whose blob uploads landed on one replica and whose manifest PUT lands on another (a
    round-robin balancer), right away: the blobs are in the bucket, not yet in the second one's memory."""
    a, b = await replica(), await replica()  # both started before the blobs exist
    config, layer = b'{"architecture": "amd64", "os": "linux"}', os.urandom(4096)
    for data in (config, layer):
        await push_blob(a, "team/fresh", data)
    document = image_manifest(config, [layer])

    digest = await push_manifest(b, "team/fresh", "v1", document, OCI_MANIFEST)
    assert await manifest(a, "team/fresh", "v1") == (200, digest, document)


async def test_a_tag_moved_or_deleted_through_one_replica_is_seen_by_the_other_at_once(replica: Replica) -> None:
    a = await replica()
    first = await push_image(a, "team/app", "latest", seed="a")
    second = await push_image(a, "team/app", "next", seed="b")
    b = await replica()
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest  # now in Redis too

    await push_manifest(a, "team/app", "latest", second.manifest, OCI_MANIFEST)
    assert (await manifest(b, "team/app", "latest"))[1] == second.digest
    assert await a.delete(f"/v2/team/app/manifests/{first.digest}") is not None
    assert (await manifest(b, "team/app", first.digest))[0] == 404
    assert await tags(b, "team/app") == ["latest", "next"]


# ---------------------------------------------------------------------- the pull-through's tag state

async def test_an_upstream_tag_cached_through_one_replica_is_served_by_the_other_without_asking_upstream(
        replica: Replica, upstream_name: str) -> None:
    a, b = await replica(), await replica()
    name = f"{upstream_name}/library/alpine"
    status, digest, body = await manifest(a, name, "latest")
    assert status == 200
    asked = upstream_requests(upstream_name)

    assert await manifest(b, name, "latest") == (200, digest, body)
    assert upstream_requests(upstream_name) == asked


async def test_a_tag_learned_from_a_head_on_one_replica_is_linked_by_a_fetch_on_the_other(
        replica: Replica, upstream_name: str) -> None:
    a, b = await replica(), await replica()
    name = f"{upstream_name}/library/alpine"
    status, digest, _ = await manifest(a, name, "latest", "HEAD")  # containerd's resolve: HEAD by tag...
    assert status == 200
    assert (await manifest(b, name, digest))[0] == 200  # ...then GET by digest, here on the other replica
    asked = upstream_requests(upstream_name)

    assert (await manifest(a, name, "latest"))[:2] == (200, digest)
    assert upstream_requests(upstream_name) == asked


async def test_an_upstream_404_remembered_by_one_replica_answers_on_the_other(
        replica: Replica, upstream_name: str) -> None:
    a, b = await replica(), await replica()
    name = f"{upstream_name}/library/alpine"
    assert (await manifest(a, name, "no-such-tag"))[0] == 404
    asked = upstream_requests(upstream_name)

    assert (await manifest(b, name, "no-such-tag"))[0] == 404
    assert upstream_requests(upstream_name) == asked


async def test_an_upstream_blob_404_remembered_by_one_replica_answers_on_the_other(
        replica: Replica, upstream_name: str) -> None:
    a, b = await replica(), await replica()
    missing = f"/v2/{upstream_name}/library/alpine/blobs/sha256:{'0' * 64}"
    assert (await a.get(missing)).status == 404
    asked = upstream_requests(upstream_name)

    assert (await b.get(missing)).status == 404
    assert upstream_requests(upstream_name) == asked


# ---------------------------------------------------------------------- Redis loses its data

async def test_after_redis_loses_its_data_replicas_answer_from_the_bucket_and_refill_it(
        replica: Replica, redis: aioredis.Redis, upstream_name: str) -> None:
    a = await replica()
    pushed = await push_image(a, "team/app", "latest", seed="a")
    moved = await push_image(a, "team/app", "next", seed="b")
    b = await replica()
    name = f"{upstream_name}/library/alpine"
    upstream_digest = (await manifest(a, name, "latest"))[1]
    assert (await manifest(b, "team/app", "latest"))[1] == pushed.digest

    await redis.flushall()
    asked = upstream_requests(upstream_name)
    assert (await manifest(b, "team/app", "latest"))[1] == pushed.digest
    assert await tags(b, "team/app") == ["latest", "next"]
    assert (await manifest(b, name, "latest"))[:2] == (200, upstream_digest)  # its confirmed_at is in the bucket
    assert upstream_requests(upstream_name) == asked
    await push_manifest(a, "team/app", "latest", moved.manifest, OCI_MANIFEST)
    assert (await manifest(b, "team/app", "latest"))[1] == moved.digest
    assert await redis.dbsize() > 0  # refilled as it was read


async def test_a_repository_pushed_through_one_replica_is_routed_locally_by_the_other_as_it_hears_of_it(
        aiohttp_client: Any, seaweed_server: SeaweedFS, upstream: Upstream, tmp_path: Path,
        cluster_redis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a default upstream a bare name is local only once a repository of that name exists. The replica
    that creates one publishes its name; the other forgets that the name was absent as it hears of it,
    without its periodic re-read of the names (an hour here)."""
    monkeypatch.setattr(bucket_files, "NAMES_REFRESH", 3600.0)
    prefix = f"t{os.urandom(6).hex()}"

    async def start(name: str) -> TestClient:
        return await aiohttp_client(build_app(build_config({
            "storage": {"path": str(tmp_path / name), "backend": "s3",
                        "s3": seaweed_server.storage_config(seaweed.BUCKET, prefix=prefix, timeout="5s")},
            "cluster": {"redis": cluster_redis}, "local": {"anonymous_push": True},
            "upstreams": [{"name": "docker.io", "url": upstream.url, "default": True, "token_hosts": ["127.0.0.1"]}],
        })))
    a, b = await start("a"), await start("b")
    assert (await manifest(b, "team/app", "v1"))[:2] == (200, upstream["team/app:v1"].digest)  # the upstream's
    names_seen = b.app[STORE].files.names_version

    pushed = await push_image(a, "team/app", "v1")
    deadline = time.monotonic() + 10
    while b.app[STORE].files.names_version == names_seen:
        assert time.monotonic() < deadline, "the other replica never heard of team/app"
        await asyncio.sleep(0.01)

    assert (await manifest(b, "team/app", "v1"))[:2] == (200, pushed.digest)


async def test_a_repository_holding_only_blobs_pushed_through_one_replica_is_known_to_the_other(
        replica: Replica) -> None:
    a, b = await replica(), await replica()
    await push_blob(a, "team/untagged", b"a layer nobody tagged yet")
    assert await tags(b, "team/untagged") == []
    async with b.get("/v2/team/nothing/tags/list") as unknown:
        assert unknown.status == 404


async def test_gc_beside_replicas_keeps_what_any_of_them_pushed_and_sweeps_what_was_deleted(
        replica: Replica) -> None:
    a, b = await replica(), await replica()
    kept = await push_image(a, "team/app", "v1", seed="kept")
    gone = await push_image(a, "team/app", "v2", seed="gone")
    other = await push_image(b, "team/other", "v1", seed="other")
    assert (await b.delete(f"/v2/team/app/manifests/{gone.digest}")).status == 202
    config = a.app[CONFIG]
    gc_store = store_for(config.storage, config.cluster)  # `pullcache gc` beside replica a, on its index
    await gc_store.open()
    try:
        await collect_garbage(gc_store, config.gc, dry_run=False, now=10**10)
        stored = set(await gc_store.stored_blobs())
    finally:
        await gc_store.close()
    assert {kept.digest, sha256(kept.layers[0]), other.digest, sha256(other.layers[0])} <= stored
    assert not {gone.digest, sha256(gone.layers[0])} & stored
    assert (await manifest(b, "team/app", "v1"))[1] == kept.digest


async def test_a_referrer_pushed_or_deleted_through_one_replica_is_listed_by_the_other_at_once(
        replica: Replica) -> None:
    a, b = await replica(), await replica()
    subject = sha256(b"an image pushed elsewhere")
    assert (await referrers(b, subject))[0]["manifests"] == []  # the empty list, now in Redis
    first, _ = await push_artifact(a, subject, artifact_type=SBOM, note="one")
    assert [found["digest"] for found in (await referrers(b, subject))[0]["manifests"]] == [first]
    assert (await a.delete(f"/v2/team/app/manifests/{first}")).status == 202
    assert (await referrers(b, subject))[0]["manifests"] == []


async def test_processes_on_one_storage_path_with_redis_share_the_pull_through_state(
        tmp_path: Path, cluster_redis: str) -> None:
    """Workers on one host (the filesystem backend) with cluster.redis: their repository files are one
    folder already, and what the pull-through remembers for a while is in Redis."""
    config = build_config({"storage": {"path": str(tmp_path / "data")}, "cluster": {"redis": cluster_redis}})
    first, second = store_for(config.storage, config.cluster), store_for(config.storage, config.cluster)
    try:
        await first.state.expiring("pending-tags", 60, 10).put("team/app@sha256:ab", "latest")
        assert await second.state.expiring("pending-tags", 60, 10).pop("team/app@sha256:ab") == "latest"
        assert await first.state.expiring("pending-tags", 60, 10).get("team/app@sha256:ab") is None
        memo = second.state.memo(10)
        memo["team/app:latest"] = "sha256:ab"
        assert "team/app:latest" not in memo  # nothing is remembered that the other process could change
    finally:
        for store in (first, second):
            await store.state.close()
