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

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pullcache.cache.files import is_orphaned, remove_if_orphaned
from pullcache.cache.index import CACHED, PUSHED, BlobRow
from pullcache.cache.layout import digest_from_blob_path
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.eviction.refs import local_refs

# GC leaves orphaned temp files younger than this: a temp file is unlocked for an instant after its
# creation, and a pullcache of an older version locks none.
TEMP_GRACE = 10 * 60.0


@dataclass(frozen=True)
class StaleFile:
    path: Path
    size: int


@dataclass
class ReconcilePlan:
    rows_without_files: list[BlobRow] = field(default_factory=list)
    files_without_rows: list[BlobRow] = field(default_factory=list)
    stale_temps: list[StaleFile] = field(default_factory=list)


def _scan_blobs(root: Path) -> dict[str, tuple[int, float]]:
    """Every blob file under blobs/<alg>/<xx>/<hex>: digest text -> (size, mtime)."""
    found: dict[str, tuple[int, float]] = {}
    if not root.is_dir():
        return found
    with os.scandir(root) as algorithms:
        for algorithm in algorithms:
            if not algorithm.is_dir():
                continue
            with os.scandir(algorithm.path) as prefixes:
                for prefix in prefixes:
                    if not prefix.is_dir():
                        continue
                    with os.scandir(prefix.path) as entries:
                        for entry in entries:
                            digest = digest_from_blob_path(Path(entry.path))
                            if digest is not None and entry.is_file():
                                info = entry.stat()
                                found[str(digest)] = (info.st_size, info.st_mtime)
    return found


def stale_files(folder: Path, older_than: float) -> list[StaleFile]:
    """Temp files directly in folder that no live process owns, last modified before older_than (an
    epoch time)."""
    stale = []
    if folder.is_dir():
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.is_file() and info.st_mtime < older_than and is_orphaned(Path(entry.path)):
                    stale.append(StaleFile(Path(entry.path), info.st_size))
    return stale


def _remove_orphans(temps: list[StaleFile]) -> list[StaleFile]:
    """Remove those still orphaned (checked again under their lock); returns the ones removed."""
    return [temp for temp in temps if remove_if_orphaned(temp.path)]


async def remove_orphaned_temps(store: Store) -> list[StaleFile]:
    """Remove every temp file no live process owns, whatever its age: a server's start-up, after
    which the temp files of a process that died (kill -9 included) are gone. Upload sessions keep
    their data elsewhere (uploads/), so a chunked upload resumes across the restart."""
    def sweep() -> list[StaleFile]:
        return _remove_orphans(stale_files(store.layout.tmp, math.inf))
    return await asyncio.to_thread(sweep)


async def plan_reconcile(store: Store, linked: set[str], now: float | None = None) -> ReconcilePlan:
    """Compare the index with the disk; `linked` is every digest local repositories hold."""
    now = time.time() if now is None else now
    files = await asyncio.to_thread(_scan_blobs, store.layout.blobs)
    rows = await store.index.rows()
    indexed = {row.digest for row in rows}
    plan = ReconcilePlan()
    plan.rows_without_files = [row for row in rows if row.digest not in files]
    plan.files_without_rows = [
        BlobRow(digest, size, PUSHED if digest in linked else CACHED, mtime)
        for digest, (size, mtime) in files.items() if digest not in indexed]
    plan.stale_temps = await asyncio.to_thread(stale_files, store.layout.tmp, now - TEMP_GRACE)
    return plan


async def apply_reconcile(store: Store, plan: ReconcilePlan) -> ReconcilePlan:
    """Carry out a plan; returns what was actually done (a concurrent writer may have fixed some)."""
    def exists(digest: str) -> bool:
        return store.blob_size(Digest.parse(digest)) is not None

    dropped = await store.index.remove_missing([row.digest for row in plan.rows_without_files],
                                               lambda digest: not exists(digest))
    added = await store.index.add_many(plan.files_without_rows, exists)
    removed = await asyncio.to_thread(_remove_orphans, plan.stale_temps)
    return ReconcilePlan(dropped, added, removed)


async def reconcile(store: Store) -> ReconcilePlan:
    """Plan and apply in one go (start-up after an unclean shutdown); returns what was done."""
    return await apply_reconcile(store, await plan_reconcile(store, (await local_refs(store)).linked))
