"""The LRU bound: remove least-recently-used cached blobs until cached content fits a target.

Only rows with origin `cached` are candidates, so pushed content is never touched. Each batch is
removed through Store.remove_unchanged, which re-checks every row under the index's write lock (a
blob used, re-filled or pushed since it was chosen stays) and forgets the manifest bytes it held in
memory, so an evicted manifest is not served from there either. A response already streaming an
evicted blob keeps its open file (Linux keeps an unlinked file alive until it is closed), and a
cached manifest whose blobs went is still served: the blobs are fetched again on the next pull.

On a full disk the pending hits cannot be written to the index first; they stay in memory and the
blobs they name are spared all the same.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pullcache import metrics
from pullcache.cache.files import StoreFullError
from pullcache.cache.index import CACHED, BlobRow
from pullcache.cache.store import Store

BATCH = 512  # candidates read per query: one transaction each, small enough to never stall the index


@dataclass(frozen=True)
class Evicted:
    blobs: int = 0
    bytes: int = 0


def _enough(rows: list[BlobRow], excess: int) -> list[BlobRow]:
    """The shortest prefix of rows (oldest first) whose sizes add up to at least excess."""
    chosen, freed = [], 0
    for row in rows:
        if freed >= excess:
            break
        chosen.append(row)
        freed += row.size
    return chosen


async def evict_to(store: Store, target_bytes: int) -> Evicted:
    """Evict least-recently-used cached blobs until cached bytes are at most target_bytes.

    Pending hits are flushed first, so a blob used a moment ago counts as used (on a full disk,
    where they stay pending, it is passed over).
    """
    with contextlib.suppress(StoreFullError):  # the hits stay pending, and spare their blobs below
        await store.flush_accesses()
    blobs = freed = 0
    while (excess := store.totals()[CACHED].bytes - target_bytes) > 0:
        rows = [row for row in await store.least_recent(BATCH) if not store.hit_pending(row.digest)]
        candidates = _enough(rows, excess)
        if not candidates:
            break
        removed = await store.remove_unchanged(candidates)
        if not removed:
            break  # every candidate was used or re-filled meanwhile: the next pass sees them anew
        batch_bytes = sum(row.size for row in removed)
        metrics.evictions.inc(len(removed))  # per batch, so the counters move with the disk
        metrics.evicted_bytes.inc(batch_bytes)
        blobs += len(removed)
        freed += batch_bytes
    return Evicted(blobs, freed)
