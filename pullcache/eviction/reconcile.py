"""Make the index agree with the disk again, both ways, and clear orphaned temp files.

The files are the truth. A crash between a blob's rename and its index write leaves a file
without a row; a file removed by hand (or a crash inside an eviction) leaves a row without a
file. Rows without files are dropped; files without rows get a row whose origin comes from the
local repositories' links (linked anywhere local: pushed, else cached) and whose recency is the
file's mtime. Every change is re-checked under the index's write lock, so a blob committed or
evicted while the scan ran is left as the committer or evictor made it.

A temp file is orphaned when no live process owns it (files.create_temp): GC removes those untouched
for TEMP_GRACE, and a server's start-up removes every one at once (remove_orphaned_temps), so what a
crash left behind, a fallocated fill of a whole layer included, does not wait for the next GC.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pullcache.cache.index import CACHED, PUSHED, BlobRow
from pullcache.cache.scan import StaleFile
from pullcache.cache.store import Store
from pullcache.eviction.refs import local_refs

# GC leaves orphaned temp files younger than this: a temp file is unlocked for an instant after its
# creation, and a pullcache of an older version locks none.
TEMP_GRACE = 10 * 60.0


@dataclass
class ReconcilePlan:
    rows_without_files: list[BlobRow] = field(default_factory=list)
    files_without_rows: list[BlobRow] = field(default_factory=list)
    stale_temps: list[StaleFile] = field(default_factory=list)


async def remove_orphaned_temps(store: Store) -> list[StaleFile]:
    """Remove every temp file no live process owns, whatever its age: a server's start-up, after
    which the temp files of a process that died (kill -9 included) are gone. Upload sessions keep
    their data elsewhere, so a chunked upload resumes across the restart."""
    return await store.remove_orphaned_temps(await store.orphaned_temps())


async def plan_reconcile(store: Store, linked: set[str], now: float | None = None) -> ReconcilePlan:
    """Compare the index with the stored blobs; `linked` is every digest local repositories hold."""
    now = time.time() if now is None else now
    files = await store.stored_blobs()
    rows = await store.blob_rows()
    indexed = {row.digest for row in rows}
    plan = ReconcilePlan()
    plan.rows_without_files = [row for row in rows if row.digest not in files]
    plan.files_without_rows = [
        BlobRow(digest, size, PUSHED if digest in linked else CACHED, mtime)
        for digest, (size, mtime) in files.items() if digest not in indexed]
    plan.stale_temps = await store.orphaned_temps(now - TEMP_GRACE)
    return plan


async def apply_reconcile(store: Store, plan: ReconcilePlan) -> ReconcilePlan:
    """Carry out a plan; returns what was actually done (a concurrent writer may have fixed some)."""
    dropped = await store.drop_rows_without_blobs([row.digest for row in plan.rows_without_files])
    added = await store.index_found_blobs(plan.files_without_rows)
    removed = await store.remove_orphaned_temps(plan.stale_temps)
    return ReconcilePlan(dropped, added, removed)


async def reconcile(store: Store) -> ReconcilePlan:
    """Plan and apply in one go (start-up after an unclean shutdown); returns what was done."""
    return await apply_reconcile(store, await plan_reconcile(store, (await local_refs(store)).linked))
