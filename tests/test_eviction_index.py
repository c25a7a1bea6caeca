"""BlobIndex as eviction relies on it: running totals, listeners, conditional removal, recency.

The local index's own test (the SQLite file both backends keep under storage.path), so it opens index.sqlite.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pullcache.cache.index import CACHED, PUSHED, BlobIndex, BlobRow, OriginTotals


@pytest.fixture
async def index(tmp_path: Path):
    index = BlobIndex(tmp_path / "index.sqlite")
    await index.open()
    yield index
    await index.close()


def _selected_totals(path: Path) -> dict[str, OriginTotals]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT origin, SUM(size), COUNT(*) FROM blobs GROUP BY origin").fetchall()
    totals = {PUSHED: OriginTotals(0, 0), CACHED: OriginTotals(0, 0)}
    totals.update({origin: OriginTotals(size, count) for origin, size, count in rows})
    return totals


async def test_running_totals_follow_adds_merges_promotions_and_removals(index: BlobIndex) -> None:
    await index.add("sha256:" + "a" * 64, 100, CACHED)
    await index.add("sha256:" + "b" * 64, 50, PUSHED)
    await index.add("sha256:" + "a" * 64, 100, CACHED)  # same blob again: counted once
    await index.add("sha256:" + "c" * 64, 7, CACHED)
    await index.add("sha256:" + "c" * 64, 7, PUSHED)  # cached, then pushed: moves to pushed
    await index.promote(["sha256:" + "a" * 64])
    await index.remove_unchanged([await index.get("sha256:" + "b" * 64)], lambda digest: None)

    assert index.totals() == {PUSHED: OriginTotals(107, 2), CACHED: OriginTotals(0, 0)}
    assert index.totals() == _selected_totals(index.path)


async def test_totals_are_read_at_open(tmp_path: Path) -> None:
    first = BlobIndex(tmp_path / "index.sqlite")
    await first.open()
    await first.add("sha256:" + "a" * 64, 10, CACHED)
    await first.close()

    second = BlobIndex(tmp_path / "index.sqlite")
    await second.open()
    try:
        assert second.totals()[CACHED] == OriginTotals(10, 1)
    finally:
        await second.close()


async def test_listeners_hear_every_change(index: BlobIndex) -> None:
    heard = []
    index.subscribe(lambda totals: heard.append(totals[CACHED].bytes))
    await index.add("sha256:" + "a" * 64, 10, CACHED)
    await index.remove_unchanged(await index.least_recent(1), lambda digest: None)
    assert heard == [10, 0]


async def test_refresh_picks_up_another_process_writes(index: BlobIndex) -> None:
    await index.add("sha256:" + "a" * 64, 10, CACHED)
    with sqlite3.connect(index.path) as other:  # what a `pullcache gc` process does
        other.execute("DELETE FROM blobs")
    heard = []
    index.subscribe(lambda totals: heard.append(totals[CACHED]))
    await index.refresh_if_changed()
    assert heard == [OriginTotals(0, 0)]
    await index.refresh_if_changed()  # nothing changed since: no notification
    assert len(heard) == 1


async def test_remove_unchanged_keeps_a_row_used_since_it_was_chosen(index: BlobIndex) -> None:
    old, used = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    await index.add(old, 1, CACHED)
    await index.add(used, 1, CACHED)
    chosen = await index.least_recent(10)
    await index.touch_many({used: chosen[-1].last_access + 60})
    unlinked = []

    removed = await index.remove_unchanged(chosen, unlinked.append)

    assert [row.digest for row in removed] == [old] and unlinked == [old]
    assert await index.get(used) is not None


async def test_remove_unchanged_skips_a_blob_promoted_to_pushed(index: BlobIndex) -> None:
    digest = "sha256:" + "a" * 64
    await index.add(digest, 1, CACHED)
    chosen = await index.least_recent(10)
    await index.add(digest, 1, PUSHED)  # a push of the same blob completed meanwhile
    assert await index.remove_unchanged(chosen, lambda d: None) == []
    assert (await index.get(digest)).origin == PUSHED


async def test_a_file_that_cannot_be_removed_keeps_its_row(index: BlobIndex) -> None:
    digest = "sha256:" + "a" * 64
    await index.add(digest, 1, CACHED)

    def refuse(_: str) -> None:
        raise PermissionError("read-only")

    assert await index.remove_unchanged(await index.least_recent(1), refuse) == []
    assert await index.get(digest) is not None


async def test_add_many_and_remove_missing_recheck_the_disk(index: BlobIndex) -> None:
    present, gone = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    rows = [BlobRow(present, 5, PUSHED, 1.0), BlobRow(gone, 6, CACHED, 1.0)]
    added = await index.add_many(rows, lambda digest: digest == present)
    assert added == [rows[0]]
    await index.add(gone, 6, CACHED)
    dropped = await index.remove_missing([present, gone], lambda digest: digest == gone)
    assert [row.digest for row in dropped] == [gone]
    assert index.totals()[PUSHED] == OriginTotals(5, 1) and index.totals()[CACHED] == OriginTotals(0, 0)


async def test_recency_orders_candidates(index: BlobIndex) -> None:
    digests = ["sha256:" + c * 64 for c in "abc"]
    for digest in digests:
        await index.add(digest, 1, CACHED)
    await index.add("sha256:" + "f" * 64, 1, PUSHED)
    await index.touch_many({digests[0]: 10**10})  # a hit on the oldest makes it the newest
    assert [row.digest for row in await index.least_recent(10)] == [digests[1], digests[2], digests[0]]
