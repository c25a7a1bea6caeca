"""Replicas sharing repository files through Redis when things go wrong: two writers of one tag, a reader
whose bucket read predates a write, and Redis going away and coming back. Real SeaweedFS and redis-server;
the races are forced by holding one replica's bucket request until the other has gone ahead."""
from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pullcache.app import build_app
from pullcache.cache.s3 import S3Objects
from pullcache.cache.store import Store
from pullcache.digests import Digest
from tests.registry_api import push_image, push_manifest
from tests.support.redis import RedisServer
from tests.support.replica_stores import replica_config
from tests.support.seaweed import SeaweedFS
from tests.test_cluster_shared import OCI_MANIFEST, manifest, tags

FIRST, SECOND = Digest.of(b"first"), Digest.of(b"second")
TAG_KEY = "repositories/team/app/_manifests/tags/latest"


def objects(store: Store) -> S3Objects:
    found: S3Objects = store.blobs.objects  # type: ignore[attr-defined]
    return found


def hold_after(monkeypatch: pytest.MonkeyPatch, store: Store, method: str,
               ) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the store's bucket `method` on the tag's key hold after the bucket answered: returns (reached,
    release)."""
    reached, release = asyncio.Event(), asyncio.Event()
    real: Callable[..., Awaitable[Any]] = getattr(objects(store), method)

    async def held(path: str, *args: Any) -> Any:
        result = await real(path, *args)
        if path == TAG_KEY:
            reached.set()
            await release.wait()
        return result
    monkeypatch.setattr(objects(store), method, held)
    return reached, release


async def in_bucket(store: Store) -> str:
    data = await objects(store).get_content(TAG_KEY)
    assert data is not None
    return str(json.loads(data)["digest"])


async def seen_by(store: Store) -> str:
    link = await store.repository("team/app").get_tag("latest")
    assert link is not None
    return str(link.digest)


async def test_two_replicas_setting_one_tag_at_once_agree_with_the_bucket(
        stores: list[Store], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = stores
    reached, release = hold_after(monkeypatch, a, "put_content")
    first = asyncio.create_task(a.repository("team/app").set_tag("latest", FIRST))
    await reached.wait()  # a's write is in the bucket; what it does in Redis comes after b's whole write

    await b.repository("team/app").set_tag("latest", SECOND)
    assert await seen_by(b) == str(SECOND)  # and read into Redis
    release.set()
    await first

    assert await in_bucket(a) == str(SECOND)  # the bucket's last write wins...
    assert [await seen_by(a), await seen_by(b)] == [str(SECOND)] * 2  # ...and every replica reads it


async def test_a_read_that_began_before_a_write_does_not_leave_the_old_tag_in_redis(
        stores: list[Store], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = stores
    await a.repository("team/app").set_tag("latest", FIRST)
    reached, release = hold_after(monkeypatch, b, "get_content")
    reader = asyncio.create_task(seen_by(b))
    await reached.wait()  # b read FIRST from the bucket after a Redis miss, and has not filled Redis yet

    await a.repository("team/app").set_tag("latest", SECOND)
    release.set()
    assert await reader == str(FIRST)  # what the bucket held when b read it
    monkeypatch.undo()
    assert [await seen_by(b), await seen_by(a)] == [str(SECOND)] * 2


# ---------------------------------------------------------------------- Redis down

@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it stops and starts again."""
    server = RedisServer().start()
    yield server
    server.close()


async def test_with_redis_down_replicas_serve_from_the_bucket_and_say_so_once(
        aiohttp_client: Any, seaweed_server: SeaweedFS, own_redis: RedisServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"t{os.urandom(6).hex()}"
    a, b = [await aiohttp_client(build_app(replica_config(seaweed_server, tmp_path, prefix, own_redis.redis_url,
                                                          name))) for name in ("a", "b")]
    first = await push_image(a, "team/app", "latest", seed="a")
    second = await push_image(a, "team/app", "next", seed="b")
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest

    own_redis.stop()
    caplog.set_level(logging.WARNING, logger="pullcache")
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest
    await push_manifest(a, "team/app", "latest", second.manifest, OCI_MANIFEST)
    assert (await manifest(b, "team/app", "latest"))[1] == second.digest
    said = [record for record in caplog.records if "cluster.redis unreachable" in record.getMessage()]
    assert said
    for _ in range(3):
        assert await tags(b, "team/app") == ["latest", "next"]
    assert [record for record in caplog.records if "cluster.redis unreachable" in record.getMessage()] == said

    own_redis.start()  # empty: it saved nothing
    await push_manifest(a, "team/app", "latest", first.manifest, OCI_MANIFEST)
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest
    assert (await manifest(a, "team/app", "latest"))[1] == first.digest


async def test_replicas_started_while_redis_is_down_serve_and_share_once_it_is_up(
        aiohttp_client: Any, seaweed_server: SeaweedFS, own_redis: RedisServer, tmp_path: Path) -> None:
    prefix = f"t{os.urandom(6).hex()}"
    own_redis.stop()
    a, b = [await aiohttp_client(build_app(replica_config(seaweed_server, tmp_path, prefix, own_redis.redis_url,
                                                          name))) for name in ("a", "b")]
    first = await push_image(a, "team/app", "latest", seed="a")
    second = await push_image(a, "team/app", "next", seed="b")
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest

    own_redis.start()
    assert (await manifest(b, "team/app", "latest"))[1] == first.digest  # read into Redis now
    await push_manifest(a, "team/app", "latest", second.manifest, OCI_MANIFEST)
    assert (await manifest(b, "team/app", "latest"))[1] == second.digest
