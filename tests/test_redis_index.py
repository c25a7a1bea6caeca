"""RedisIndex, the blob index replicas on one bucket share (cache/redis_index.py), against a real redis-server:
the upsert rules, the cluster's totals on every replica, recency, conditional removal against a concurrent
commit, and the rebuild from the bucket after Redis lost its data."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from pullcache.cache import redis_index
from pullcache.cache.configured import store_for
from pullcache.cache.index import CACHED, PUSHED, BlobRow, OriginTotals, Totals
from pullcache.cache.redis_index import MARK_TTL, RedisIndex
from pullcache.cache.s3_backend import blob_key
from pullcache.cache.store import Store
from pullcache.cluster.redis_client import redis_client
from pullcache.cluster.redis_pool import SharedRedis, shared_redis
from pullcache.digests import Digest
from pullcache.eviction.reconcile import reconcile
from tests.support.redis import RedisServer
from tests.support.replica_stores import replica_config
from tests.support.seaweed import SeaweedFS

A, B, C = ("sha256:" + letter * 64 for letter in "abc")


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[SharedRedis]:
    """The session's Redis under a namespace of this test's own."""
    shared = shared_redis(redis_server.redis_url, f"pullcache:test-{os.urandom(6).hex()}:")
    yield shared
    await shared.client.aclose()


@pytest.fixture
async def index(redis: SharedRedis) -> RedisIndex:
    index = RedisIndex(redis)
    await index.open()
    return index


async def _recount(index: RedisIndex) -> Totals:
    """The totals counted from the rows themselves, not from the running totals."""
    totals = {PUSHED: OriginTotals(0, 0), CACHED: OriginTotals(0, 0)}
    for row in await index.rows():
        current = totals[row.origin]
        totals[row.origin] = OriginTotals(current.bytes + row.size, current.blobs + 1)
    return totals


async def test_pushed_wins_over_cached_and_totals_follow_every_write(redis: SharedRedis, index: RedisIndex) -> None:
    await index.add(A, 100, CACHED)
    await index.add(B, 50, PUSHED)
    await index.add(A, 100, CACHED)  # the same blob again: counted once
    await index.add(C, 7, CACHED)
    await index.add(C, 7, PUSHED)  # cached, then pushed: moves to pushed
    await index.add(B, 50, CACHED)  # pushed, then cached: stays pushed
    assert await index.promote([A, B]) == [A]
    await index.remove_unchanged([await index.get(B)], lambda digest: None)  # type: ignore[list-item]

    assert index.totals() == {PUSHED: OriginTotals(107, 2), CACHED: OriginTotals(0, 0)}
    assert index.totals() == await _recount(index)
    assert {row.digest for row in await index.rows(PUSHED)} == {A, C}
    assert await index.least_recent(10) == []


async def test_another_replica_sees_the_cluster_totals_after_a_refresh(redis: SharedRedis, index: RedisIndex) -> None:
    other = RedisIndex(redis)
    await other.open()
    heard: list[Totals] = []
    other.subscribe(heard.append)

    await index.add(A, 10, CACHED)
    await index.add(B, 5, PUSHED)
    await other.refresh_if_changed()

    assert other.totals() == {PUSHED: OriginTotals(5, 1), CACHED: OriginTotals(10, 1)}
    assert heard == [other.totals()]
    await other.refresh_if_changed()  # nothing changed: no news
    assert len(heard) == 1


async def test_recency_only_moves_forward_and_orders_eviction_candidates(index: RedisIndex) -> None:
    for digest in (A, B, C):
        await index.add(digest, 1, CACHED)
    a_at = (await index.get(A)).last_access  # type: ignore[union-attr]
    await index.touch_many({A: a_at + 100, B: 1.0})  # A used later; B's hit is older than its commit
    await index.touch_many({A: a_at + 50})  # an older hit does not move A back

    assert (await index.get(A)).last_access == a_at + 100  # type: ignore[union-attr]
    assert [row.digest for row in await index.least_recent(10)] == [B, C, A]
    assert [row.digest for row in await index.least_recent(1)] == [B]


async def test_remove_unchanged_removes_only_rows_as_chosen_and_keeps_those_whose_file_stays(
        index: RedisIndex) -> None:
    for digest in (A, B, C):
        await index.add(digest, 10, CACHED)
    chosen = await index.least_recent(10)
    await index.touch_many({B: chosen[1].last_access + 1})  # used since it was chosen
    removed_files: list[str] = []

    def remove_file(digest: str) -> None:
        if digest == C:
            raise OSError("the bucket refused the delete")
        removed_files.append(digest)

    removed = await index.remove_unchanged(chosen, remove_file)

    assert [row.digest for row in removed] == [A] and removed_files == [A]
    assert await index.get(A) is None
    assert {row.digest for row in await index.rows()} == {B, C}
    assert index.totals()[CACHED] == OriginTotals(20, 2)
    assert await index.remove_unchanged([await index.get(C)], lambda digest: None)  # type: ignore[list-item]


class HeldEviction:
    """An eviction of A's only row, held in its object delete until `release` is set; `commit_met_mark` is set
    once a commit of A found the row marked (and so waits for the evictor)."""

    def __init__(self, index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
        self.index = index
        self.deleting, self.release = threading.Event(), threading.Event()
        self.order: list[str] = []
        self.commit_met_mark = asyncio.Event()
        upsert = index._upsert

        async def watched_upsert(**kwargs: Any) -> Any:
            done, totals = await upsert(**kwargs)
            if done == [0]:
                self.commit_met_mark.set()
            return done, totals
        monkeypatch.setattr(index, "_upsert", watched_upsert)

    def _remove_file(self, digest: str) -> None:
        self.deleting.set()
        self.release.wait(10)
        self.order.append("object deleted")

    async def start(self) -> tuple[BlobRow, asyncio.Task[list[BlobRow]]]:
        """A's row, and the eviction once it is marked and deleting."""
        await self.index.add(A, 10, CACHED)
        (row,) = await self.index.least_recent(1)
        eviction = asyncio.create_task(self.index.remove_unchanged([row], self._remove_file))
        await asyncio.to_thread(self.deleting.wait, 10)
        return row, eviction


async def test_a_commit_meeting_an_eviction_of_its_digest_writes_its_row_after_the_bytes_went(
        index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving forced: the evictor marked the row and is deleting the object when another replica
    commits the same digest. The commit's add must return only after the evictor is done, so the bytes it
    publishes next are not deleted, and its row must be there at the end."""
    held = HeldEviction(index, monkeypatch)
    row, eviction = await held.start()
    commit = asyncio.create_task(index.add(A, 10, CACHED))
    commit.add_done_callback(lambda _: held.order.append("commit indexed"))
    await asyncio.wait_for(held.commit_met_mark.wait(), 10)
    assert not commit.done()
    held.release.set()
    removed = await eviction
    await commit

    assert removed == [row]
    assert held.order == ["object deleted", "commit indexed"]
    after = await index.get(A)
    assert after is not None and after.last_access > row.last_access
    assert index.totals()[CACHED] == OriginTotals(10, 1)


async def test_remove_missing_drops_only_rows_still_missing(index: RedisIndex) -> None:
    await index.add(A, 10, CACHED)
    await index.add(B, 20, PUSHED)

    dropped = await index.remove_missing([A, B, C], lambda digest: digest != B)

    assert [row.digest for row in dropped] == [A]
    assert [row.digest for row in await index.rows()] == [B]
    assert index.totals() == {PUSHED: OriginTotals(20, 1), CACHED: OriginTotals(0, 0)}


async def test_a_commit_goes_on_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer().start()
    redis = shared_redis(server.redis_url, "pullcache:test:")
    try:
        index = RedisIndex(redis)
        await index.open()
        server.stop()
        await index.add(A, 10, CACHED)  # not recorded, but no error
        await index.touch_many({A: 1.0})
        assert await index.get(A) is None
        assert redis.trouble.down
        with pytest.raises(Exception):  # noqa: B017 - eviction cannot go on without the index
            await index.least_recent(1)
    finally:
        await redis.client.aclose()
        server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may FLUSHALL."""
    server = RedisServer().start()
    yield server
    server.close()


async def test_after_redis_loses_the_index_it_is_rebuilt_from_the_bucket_with_the_origins(
        seaweed_server: SeaweedFS, own_redis: RedisServer, tmp_path: Path) -> None:
    config = replica_config(seaweed_server, tmp_path, f"t{os.urandom(6).hex()}", own_redis.redis_url, "a")
    store: Store = store_for(config.storage, config.cluster)
    await store.open()
    try:
        assert store.index_needs_rebuild()  # never built: the leader builds it
        await reconcile(store)
        await store.index_rebuilt()
        assert not store.index_needs_rebuild()
        pushed = await store.push_blob("team/app", _one(b"pushed bytes"), Digest.of(b"pushed bytes"))
        cached = await store.put_small(b"cached bytes", origin=CACHED)
        before = store.totals()

        flusher = redis_client(own_redis.redis_url)
        await flusher.flushall()  # Redis lost its data (a restart without persistence)
        await flusher.aclose()
        await store.refresh_totals()
        assert store.index_needs_rebuild()
        assert store.totals()[CACHED] == OriginTotals(0, 0)

        await reconcile(store)
        await store.index_rebuilt()
        await store.refresh_totals()

        assert not store.index_needs_rebuild()
        assert store.totals() == before
        assert (await store.blob_row(pushed)).origin == PUSHED  # type: ignore[union-attr]
        assert (await store.blob_row(cached)).origin == CACHED  # type: ignore[union-attr]
    finally:
        await store.close()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_blob_committed_on_one_replica_while_another_evicts_it_keeps_its_bytes_and_row(
        stores: list[Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader (a) evicts a blob and is about to delete its object when replica b commits the same bytes.
    a is released as soon as b either waits for it or finished its commit: waiting, b uploads after a's delete;
    had b finished first, a's delete would leave b's row without bytes."""
    evictor, committer = stores
    data = os.urandom(1000)
    digest = await evictor.put_small(data, origin=CACHED)
    (row,) = await evictor.least_recent(1)
    about_to_delete, release = threading.Event(), threading.Event()
    remove_blocking = evictor.blobs.remove_blocking

    def held_remove(found: Digest) -> None:
        about_to_delete.set()
        release.wait(10)
        remove_blocking(found)
    monkeypatch.setattr(evictor.blobs, "remove_blocking", held_remove)
    index = committer.index
    assert isinstance(index, RedisIndex)
    upsert = index._upsert

    async def watched_upsert(**kwargs: Any) -> Any:
        done, totals = await upsert(**kwargs)
        if done == [0]:
            release.set()  # b waits for the eviction: let it finish
        return done, totals
    monkeypatch.setattr(index, "_upsert", watched_upsert)

    eviction = asyncio.create_task(evictor.remove_unchanged([row]))
    await asyncio.to_thread(about_to_delete.wait, 10)
    committed = await committer.write_blob(_one(data), digest, origin=CACHED)
    release.set()  # b finished without waiting (the race this guards against): let a delete now
    removed = await eviction

    assert committed == digest and removed == [row]
    assert await committer.blob_row(digest) is not None
    assert await evictor.blobs.objects.stat(blob_key(digest)) is not None  # type: ignore[attr-defined]


async def test_a_mount_on_a_replica_that_saw_a_blob_another_evicted_is_refused(stores: list[Store]) -> None:
    """The replica remembers the blob's size from before; it must ask the bucket before it links the blob into
    a local repository as pushed content, or the pushed image would name bytes that are gone."""
    leader, other = stores
    digest = await leader.put_small(os.urandom(1000), origin=CACHED)
    assert await other.find_blob_size(digest) is not None  # seen by the other replica (a pull, a HEAD)
    (row,) = await leader.least_recent(1)
    assert await leader.remove_unchanged([row]) == [row]

    assert not await other.mount_blob("team/app", digest)  # the client uploads it instead
    assert await other.blob_row(digest) is None


async def test_a_commit_whose_fresh_row_an_eviction_took_keeps_a_row_for_its_bytes(
        stores: list[Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """An eviction that must free nearly everything (a full disk) may take a row written a moment ago, while
    its bytes are still on their way to the bucket: the eviction deletes the absent object, the bytes land,
    and the eviction then drops the row it marked. The commit must write the row again after that."""
    evictor, committer = stores
    data = os.urandom(1000)
    added, uploading, published = asyncio.Event(), asyncio.Event(), asyncio.Event()
    publish = committer.blobs.publish

    async def held_publish(writer: Any, digest: Digest) -> None:
        added.set()
        await uploading.wait()
        await publish(writer, digest)
        published.set()
    monkeypatch.setattr(committer.blobs, "publish", held_publish)
    deleted, drop = threading.Event(), threading.Event()
    remove = evictor.blobs.remove_blocking

    def held_remove(digest: Digest) -> None:
        remove(digest)
        deleted.set()
        drop.wait(10)
    monkeypatch.setattr(evictor.blobs, "remove_blocking", held_remove)

    commit = asyncio.create_task(committer.write_blob(_one(data), Digest.of(data), origin=CACHED))
    await added.wait()
    (row,) = await evictor.least_recent(1)  # the fresh row
    eviction = asyncio.create_task(evictor.remove_unchanged([row]))
    await asyncio.to_thread(deleted.wait, 10)  # marked, and the absent object deleted
    uploading.set()
    await published.wait()
    drop.set()
    assert await eviction == [row]
    digest = await commit

    assert await committer.find_blob_size(digest) == len(data)
    assert await committer.blob_row(digest) is not None


async def test_a_replica_whose_clock_runs_ahead_still_waits_for_a_live_mark(
        index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """Marks are timed by Redis, not by the replicas: a committer whose clock runs two minutes ahead of the
    evictor's (past MARK_TTL) must still see the evictor's mark as live and wait for it, or its row would go
    before the evictor's delete and promise bytes that are gone."""
    held = HeldEviction(index, monkeypatch)
    row, eviction = await held.start()  # marked, deleting
    real_time = time.time
    monkeypatch.setattr(redis_index, "time", SimpleNamespace(time=lambda: real_time() + 2 * MARK_TTL))
    commit = asyncio.create_task(index.add(A, 10, CACHED))
    met = asyncio.create_task(held.commit_met_mark.wait())
    await asyncio.wait([commit, met], return_when=asyncio.FIRST_COMPLETED)
    finished_early = commit.done()
    held.release.set()
    assert await eviction == [row]
    await commit
    met.cancel()

    assert not finished_early  # it waited for the mark
    assert await index.get(A) is not None
    assert index.totals()[CACHED] == OriginTotals(10, 1)


async def test_an_eviction_cancelled_mid_delete_still_drops_the_row_of_the_object_it_deleted(
        index: RedisIndex) -> None:
    """stop() cancels the leader's pass while a delete runs in its thread (which goes on regardless): the row
    must not stay marked, promising bytes that are gone and holding off every commit of the digest for
    MARK_TTL. The blob being evicted finishes; the next one is not started."""
    await index.add(A, 10, CACHED)
    await index.add(B, 10, CACHED)
    chosen = await index.least_recent(2)
    deleting, release = threading.Event(), threading.Event()
    deleted: list[str] = []

    def remove_file(digest: str) -> None:
        deleting.set()
        release.wait(10)
        deleted.append(digest)

    eviction = asyncio.create_task(index.remove_unchanged(chosen, remove_file))
    await asyncio.to_thread(deleting.wait, 10)
    eviction.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await eviction

    assert deleted == [chosen[0].digest]
    assert await index.get(chosen[0].digest) is None
    assert await index.get(chosen[1].digest) == chosen[1]
    assert index.totals()[CACHED] == OriginTotals(10, 1)


def refuse_once(monkeypatch: pytest.MonkeyPatch, index: RedisIndex, script: str) -> None:
    """The index's call of `script` fails once as a Redis blip would, then works again."""
    real = getattr(index, script)

    async def refused_once(**kwargs: Any) -> Any:
        monkeypatch.setattr(index, script, real)
        raise RedisConnectionError("connection reset")
    monkeypatch.setattr(index, script, refused_once)


async def test_an_eviction_whose_row_drop_redis_refused_counts_the_blob_and_drops_the_row_later(
        index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis fails just after an object went: the blob is reported removed (the caller forgets it and counts
    it), and the row is dropped when Redis answers again (the next tick), not left marked for MARK_TTL."""
    await index.add(A, 10, CACHED)
    await index.add(B, 10, CACHED)
    chosen = await index.least_recent(2)
    refuse_once(monkeypatch, index, "_drop_marked")

    removed = await index.remove_unchanged(chosen, lambda digest: None)
    await index.refresh_if_changed()  # the tick

    assert removed == chosen
    assert await index.rows() == []
    assert index.totals()[CACHED] == OriginTotals(0, 0)


async def test_a_push_of_a_cached_blob_redis_missed_makes_it_pushed_once_redis_answers(
        index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blip swallows the add(PUSHED) of a push or mount of a blob cached before: the row would stay cached
    and eviction could delete pushed content. The replica keeps what Redis missed and replays it at the tick."""
    await index.add(A, 10, CACHED)
    upsert = index._upsert

    async def refused(**kwargs: Any) -> Any:
        raise RedisConnectionError("connection reset")
    monkeypatch.setattr(index, "_upsert", refused)
    await index.add(A, 10, PUSHED)  # not recorded, but no error
    monkeypatch.setattr(index, "_upsert", upsert)

    await index.refresh_if_changed()  # the tick, Redis answering again

    assert (await index.get(A)).origin == PUSHED  # type: ignore[union-attr]
    assert await index.least_recent(10) == []
    assert index.totals() == {PUSHED: OriginTotals(10, 1), CACHED: OriginTotals(0, 0)}


async def test_an_eviction_whose_unmark_redis_refused_unmarks_the_row_later(
        redis: SharedRedis, index: RedisIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object could not go and Redis fails as the evictor takes its mark back: the row (still true) is
    unmarked when Redis answers again (the next tick), so commits of the digest do not wait out MARK_TTL."""
    await index.add(A, 10, CACHED)
    chosen = await index.least_recent(1)
    refuse_once(monkeypatch, index, "_unmark")

    def remove_file(digest: str) -> None:
        raise OSError("the bucket refused the delete")

    assert await index.remove_unchanged(chosen, remove_file) == []
    await index.refresh_if_changed()  # the tick

    assert await redis.client.hmget(f"{redis.namespace}index:b:{A}", "e", "x") == [None, None]
    assert await index.get(A) == chosen[0]
