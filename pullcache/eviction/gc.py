"""Garbage collection: mark what must stay, sweep what nothing needs, reconcile index and disk.

One code path serves the periodic sweep (EvictionService, every gc.interval) and `pullcache gc`,
which may run while a server uses the same storage (docs/gc.md says why that is safe):

- reconcile: rows without files are dropped, files without rows are indexed, orphaned temp files
  removed;
- mark: every manifest of a local repository and every blob it references (an index's child
  manifests too), plus every cached blob still in the LRU index (eviction owns those);
- sweep: pushed blobs nothing marked any more (after a DELETE), but only when unused for the grace
  period (BLOB_GRACE, or gc.upload_ttl if shorter: a push idle that long is abandoned anyway) and
  older than the oldest live upload session, so a push whose manifest has not arrived yet keeps
  its blobs; upload sessions idle longer than gc.upload_ttl;
- prune: what cached repositories still name of evicted content (eviction/prune.py).

A dry run plans the same and changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pullcache import metrics
from pullcache.cache.configured import store_for
from pullcache.cache.index import CACHED, PUSHED, BlobRow
from pullcache.cache.store import Store
from pullcache.cache.uploads import UploadFolder
from pullcache.config import Config, GCConfig
from pullcache.digests import Digest
from pullcache.eviction.prune import LINK, REVISION, prune, stale_names
from pullcache.eviction.reconcile import TEMP_GRACE, apply_reconcile, plan_reconcile
from pullcache.eviction.refs import LocalRefs, local_refs

log = logging.getLogger("pullcache.gc")

BLOB_GRACE = 3600.0  # an unreferenced pushed blob used this recently may belong to a push in progress
PRUNE_REASONS = {REVISION: "cached manifest, evicted, no tag names it", LINK: "cached blob link, blob evicted"}


@dataclass(frozen=True)
class Removal:
    kind: str  # blob, upload, temp, row (an index row whose file is gone), revision or link (prune.py)
    name: str
    bytes: int
    reason: str


@dataclass
class GCReport:
    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    indexed: list[BlobRow] = field(default_factory=list)  # files that had no row
    promoted: list[str] = field(default_factory=list)  # cached blobs a local repository holds: now pushed

    @property
    def reclaimed(self) -> int:
        return sum(removal.bytes for removal in self.removals)

    def count(self, kind: str) -> int:
        return sum(removal.kind == kind for removal in self.removals)

    def lines(self) -> list[str]:
        """What was (or, in a dry run, would be) done, one line each, then a summary."""
        would = self.dry_run
        lines = [f"{'would remove' if would else 'removed'} {r.kind} {r.name} ({r.bytes} bytes): {r.reason}"
                 for r in self.removals]
        lines += [f"{'would index' if would else 'indexed'} blob {row.digest} ({row.size} bytes) as {row.origin}: "
                  "file had no index row" for row in self.indexed]
        lines += [f"{'would mark' if would else 'marked'} blob {digest} as pushed: a local repository holds it"
                  for digest in self.promoted]
        lines.append(
            f"gc{' (dry run)' if would else ''}: {'would reclaim' if would else 'reclaimed'} {self.reclaimed} bytes "
            f"({self.count('blob')} blobs, {self.count('upload')} upload sessions, {self.count('temp')} temp files, "
            f"{self.count('row')} index rows without files, {self.count(REVISION) + self.count(LINK)} "
            f"cached revisions and links of evicted content; {len(self.indexed)} files indexed)")
        return lines


@dataclass(frozen=True)
class UploadScan:
    expired: list[Removal]
    oldest_live_start: float | None


async def mark(store: Store, refs: LocalRefs) -> set[str]:
    """Digests that must stay: what local manifests reference, and every cached blob in the LRU."""
    return refs.referenced | {row.digest for row in await store.blob_rows(CACHED)}


def sweep_candidates(pushed: list[BlobRow], live: set[str], cutoff: float) -> list[BlobRow]:
    """Pushed blobs nothing marked, unused since before cutoff."""
    return [row for row in pushed if row.digest not in live and row.last_access < cutoff]


async def sweep(store: Store, candidates: list[BlobRow]) -> list[BlobRow]:
    """Remove unreferenced pushed blobs and their local links.

    The local repositories are walked again first: a manifest pushed while this GC ran keeps
    what it references. Each removal is re-checked under the index's write lock.
    """
    if not candidates:
        return []  # the common case: no second walk
    fresh = await local_refs(store)
    candidates = [row for row in candidates if row.digest not in fresh.referenced]
    removed = await store.remove_unchanged(candidates)
    for row in removed:
        for name in fresh.links.get(row.digest, ()):
            await store.repository(name).unlink_blob(Digest.parse(row.digest))
    return removed


def _scan_uploads(folders: list[UploadFolder], ttl: float, now: float, started: dict[str, float]) -> UploadScan:
    """Sessions idle for ttl (their data's last write) and half-created folders, with their sizes."""
    expired, live_starts = [], []
    for folder in folders:
        if folder.upload_id not in started and folder.last_active < now - TEMP_GRACE:
            reason = "upload folder without session info"
        elif folder.upload_id in started and folder.last_active < now - ttl:
            idle_since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(folder.last_active))
            reason = f"upload session idle since {idle_since}"
        else:
            if folder.upload_id in started:
                live_starts.append(started[folder.upload_id])
            continue
        expired.append(Removal("upload", folder.upload_id, folder.size, reason))
    return UploadScan(expired, min(live_starts, default=None))


async def collect_garbage(store: Store, config: GCConfig, *, dry_run: bool, now: float | None = None) -> GCReport:
    """One GC run over an open store; with dry_run nothing is changed, only reported."""
    now = time.time() if now is None else now
    report = GCReport(dry_run)
    refs = await local_refs(store)

    plan = await plan_reconcile(store, refs.linked, now)
    if not dry_run:
        plan = await apply_reconcile(store, plan)
    report.indexed = plan.files_without_rows
    report.removals += [Removal("row", row.digest, 0, "index row whose file is gone")
                        for row in plan.rows_without_files]
    report.removals += [Removal("temp", temp.name, temp.size, "orphaned temp file") for temp in plan.stale_temps]

    rows = await store.blob_rows()
    if dry_run:  # what reconcile would have added counts as indexed
        rows += plan.files_without_rows
    holds = refs.linked
    report.promoted = sorted(row.digest for row in rows if row.origin == CACHED and row.digest in holds)
    if not dry_run:
        report.promoted = await store.promote(report.promoted)

    sessions = {session.id: session for session in await store.uploads.sessions()}
    started = {upload_id: session.started for upload_id, session in sessions.items()}
    uploads = _scan_uploads(await store.uploads.folders(), config.upload_ttl, now, started)
    cutoff = min(now - min(BLOB_GRACE, config.upload_ttl), uploads.oldest_live_start or now)
    live = await mark(store, refs) | set(report.promoted)
    candidates = sweep_candidates([row for row in rows if row.origin == PUSHED], live, cutoff)
    swept = candidates if dry_run else await sweep(store, candidates)
    report.removals += [Removal("blob", row.digest, row.size, "pushed, no local manifest references it")
                        for row in swept]

    expired = uploads.expired
    if not dry_run:
        kept = set()
        for removal in uploads.expired:
            if removal.name not in sessions:
                await store.uploads.remove_folder(removal.name)
            elif not await store.uploads.remove_if_idle(sessions[removal.name], now - config.upload_ttl):
                kept.add(removal.name)  # a chunk is arriving, or arrived since the scan
        expired = [removal for removal in expired if removal.name not in kept]
    report.removals += expired

    stale = await stale_names(store)
    pruned = stale if dry_run else await prune(store, stale)
    report.removals += [Removal(name.kind, str(name), 0, PRUNE_REASONS[name.kind]) for name in pruned]

    if not dry_run:
        metrics.gc_runs.inc()
        metrics.gc_reclaimed_bytes.inc(report.reclaimed)
    return report


async def run_gc_command(config: Config, dry_run: bool) -> int:
    """`pullcache gc [--dry-run]`: one GC run on the configured storage, printed line by line."""
    root = Path(config.storage.path)
    if not await asyncio.to_thread(root.is_dir):
        print(f"pullcache gc: storage.path {str(root)!r} does not exist; nothing to collect")
        return 1
    store = store_for(config.storage, config.cluster)
    await store.open()
    try:
        report = await collect_garbage(store, config.gc, dry_run=dry_run)
    finally:
        await store.close()
    for line in report.lines():
        print(line)
    return 0
