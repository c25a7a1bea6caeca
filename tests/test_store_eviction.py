"""The store against eviction: a blob that is pushed (or mounted) while eviction removes the cached copy of
the same bytes is never lost, and what eviction removed is not served from memory either.

The race is made deterministic by letting eviction win it: the store's next index write first waits for an
eviction pass that removes every cached blob, i.e. eviction lands between the store seeing the file and
recording the blob.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import pytest

from pullcache.cache.index import CACHED, PUSHED
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.eviction.lru import evict_to

DATA = b'{"schemaVersion": 2, "layers": []} - bytes both pulled and pushed'
DIGEST = Digest.of(DATA)


async def one_chunk(data: bytes) -> AsyncIterable[bytes]:
    yield data


def evict_before_the_next_index_write(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    add = store.index.add

    async def evict_then_add(digest: str, size: int, origin: str) -> None:
        monkeypatch.setattr(store.index, "add", add)  # once
        await evict_to(store, 0)
        await add(digest, size, origin)
    monkeypatch.setattr(store.index, "add", evict_then_add)


def evict_after_the_next_index_write(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    add = store.index.add

    async def add_then_evict(digest: str, size: int, origin: str) -> None:
        monkeypatch.setattr(store.index, "add", add)  # once
        await add(digest, size, origin)
        await evict_to(store, 0)
    monkeypatch.setattr(store.index, "add", add_then_evict)


async def stored_bytes(store: Store) -> bytes | None:
    """The blob as the backend stores it, bypassing the store's in-memory manifest cache."""
    return await asyncio.to_thread(store.read_blob_blocking, str(DIGEST))


async def assert_pushed_and_on_disk(store: Store) -> None:
    row = await store.blob_row(DIGEST)
    assert row is not None and row.origin == PUSHED
    assert await stored_bytes(store) == DATA


async def test_a_push_racing_eviction_of_its_cached_copy_keeps_the_blob(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_small(DATA, origin=CACHED)
    evict_before_the_next_index_write(store, monkeypatch)

    await store.push_blob("team/app", one_chunk(DATA), DIGEST)

    await assert_pushed_and_on_disk(store)


async def test_an_upload_completed_while_eviction_removes_its_cached_copy_keeps_the_blob(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_small(DATA, origin=CACHED)
    session = await store.uploads.create("team/app")
    await store.uploads.append(session, one_chunk(DATA))
    evict_before_the_next_index_write(store, monkeypatch)

    await store.complete_upload(session, DIGEST)

    await assert_pushed_and_on_disk(store)


async def test_a_manifest_push_racing_eviction_of_its_cached_copy_keeps_the_manifest(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_small(DATA, origin=CACHED)
    evict_before_the_next_index_write(store, monkeypatch)

    await store.put_small(DATA, origin=PUSHED)

    await assert_pushed_and_on_disk(store)


async def test_a_new_cached_blob_whose_row_is_evicted_before_its_file_lands_is_indexed_again(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    evict_after_the_next_index_write(store, monkeypatch)

    await store.write_blob(one_chunk(DATA), DIGEST, origin=CACHED)

    row = await store.blob_row(DIGEST)
    assert row is not None and row.size == len(DATA)
    assert await stored_bytes(store) == DATA


async def test_a_mount_of_a_blob_evicted_meanwhile_fails_and_leaves_no_row(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_small(DATA, origin=CACHED)
    evict_before_the_next_index_write(store, monkeypatch)

    assert not await store.mount_blob("team/app", DIGEST)

    assert await store.blob_row(DIGEST) is None
    assert not await store.repository("team/app").has_blob_link(DIGEST)


async def test_an_evicted_manifest_is_not_served_from_memory(store: Store) -> None:
    await store.put_small(DATA, origin=CACHED)
    assert await store.read_small(DIGEST) == DATA

    await evict_to(store, 0)

    assert await store.read_small(DIGEST) is None
