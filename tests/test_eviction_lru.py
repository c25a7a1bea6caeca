"""The LRU bound over a real Store: least-recent cached blobs go, pushed blobs never do."""
from __future__ import annotations

import asyncio

from pullcache import metrics
from pullcache.cache.index import CACHED, PUSHED
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.eviction.lru import evict_to

KIB = 1024


async def put(store: Store, seed: str, size: int, origin: str) -> Digest:
    return await store.put_small((seed * size).encode()[:size], origin=origin)


async def test_evicts_least_recent_cached_blobs_down_to_the_target(store: Store) -> None:
    old = [await put(store, f"old{i}", 10 * KIB, CACHED) for i in range(3)]
    new = [await put(store, f"new{i}", 10 * KIB, CACHED) for i in range(3)]

    evicted = await evict_to(store, 35 * KIB)

    assert (evicted.blobs, evicted.bytes) == (3, 30 * KIB)
    assert [store.blob_size(d) for d in old] == [None] * 3
    assert [store.blob_size(d) for d in new] == [10 * KIB] * 3
    assert store.totals()[CACHED].bytes == 30 * KIB


async def test_pushed_blobs_are_never_evicted(store: Store) -> None:
    pushed = await put(store, "pushed", 50 * KIB, PUSHED)
    cached = await put(store, "cached", 10 * KIB, CACHED)

    await evict_to(store, 0)

    assert store.blob_size(pushed) == 50 * KIB and store.blob_size(cached) is None
    assert store.totals()[PUSHED].bytes == 50 * KIB


async def test_a_hit_not_yet_flushed_still_protects_the_blob(store: Store) -> None:
    first = await put(store, "first", 10 * KIB, CACHED)
    second = await put(store, "second", 10 * KIB, CACHED)
    store.note_access(first)  # in memory only; evict_to flushes before it chooses

    await evict_to(store, 10 * KIB)

    assert store.blob_size(first) == 10 * KIB and store.blob_size(second) is None


async def test_a_reader_of_an_evicted_blob_reads_it_whole(store: Store) -> None:
    digest = await put(store, "streamed", 64 * KIB, CACHED)
    opened = await store.open_blob(digest)  # a response streaming it
    assert opened is not None and opened.file is not None
    async with opened:
        head = await asyncio.to_thread(opened.file.read, KIB)
        await evict_to(store, 0)
        rest = await asyncio.to_thread(opened.file.read)
    assert Digest.of(head + rest) == digest
    assert store.blob_size(digest) is None and await store.blob_row(digest) is None


async def test_a_blob_filled_again_after_eviction_has_file_and_row(store: Store) -> None:
    digest = await put(store, "refill", 10 * KIB, CACHED)
    await evict_to(store, 0)

    await put(store, "refill", 10 * KIB, CACHED)  # the next pull fetches it again

    row = await store.blob_row(digest)
    assert store.blob_size(digest) == 10 * KIB and row is not None and row.size == 10 * KIB


async def test_eviction_counts_into_the_metrics(store: Store) -> None:
    def counters() -> tuple[float, float]:
        sample = metrics.REGISTRY.get_sample_value
        return sample("pullcache_evictions_total") or 0, sample("pullcache_evicted_bytes_total") or 0

    before = counters()
    await put(store, "counted", 3 * KIB, CACHED)
    await evict_to(store, 0)
    after = counters()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3 * KIB)


async def test_an_already_missing_file_only_loses_its_row(store: Store) -> None:
    digest = await put(store, "vanished", 10 * KIB, CACHED)
    await asyncio.to_thread(store.blobs.remove_blocking, digest)  # gone behind the index's back
    evicted = await evict_to(store, 0)
    assert evicted.blobs == 1 and await store.blob_row(digest) is None
