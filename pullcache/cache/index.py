"""The blob index: size, origin (pushed or cached) and last access of every blob, in SQLite.

`Index` is what the store and eviction use of an index; BlobIndex below keeps it in SQLite under
storage.path, and replicas on one bucket share one in Redis instead (cache/redis_index.py).

The files are the truth and this index is derived from them (eviction/reconcile rebuilds it).
All SQLite work runs on one dedicated thread, so the event loop never waits on the database
and the connection is only ever used by the thread that made it. WAL mode and a busy timeout
let a `pullcache gc` process read and write alongside a running server.

The index keeps running totals per origin in memory (one SELECT at open, then a delta per
write), so the store's size is known without a query; `refresh_if_changed()` re-reads them when
another process (a `pullcache gc`) wrote to the database. Listeners hear about every change:
the eviction service uses that to notice when a commit takes cached content over its bound, and
to hear Store.report_disk_full() from whoever caught an ENOSPC.

On a full disk SQLite cannot grow its WAL, so every write fails ("database or disk is full"). That
is raised as StoreFullError, like any other write the disk refused, with the totals as they were
before the transaction. Eviction's removals still work: they remove the files before they commit
the rows, so the commit has the files' space.
"""
from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pullcache.cache.files import StoreFullError

PUSHED = "pushed"
CACHED = "cached"
ORIGINS = (PUSHED, CACHED)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('pushed', 'cached')),
    last_access REAL NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_by_recency ON blobs (origin, last_access);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Pushed wins: a blob that was cached and is then pushed (or found linked by a local repository)
# must never be evicted. Recency only moves forward.
_UPSERT = (
    "INSERT INTO blobs (digest, size, origin, last_access, created) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(digest) DO UPDATE SET size = excluded.size, "
    "last_access = MAX(blobs.last_access, excluded.last_access), "
    "origin = CASE WHEN blobs.origin = 'pushed' OR excluded.origin = 'pushed' THEN 'pushed' ELSE 'cached' END")


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    size: int
    origin: str
    last_access: float


@dataclass(frozen=True, slots=True)
class OriginTotals:
    bytes: int
    blobs: int


Totals = dict[str, OriginTotals]
TotalsListener = Callable[[Totals], None]


def _is_full(exc: sqlite3.OperationalError) -> bool:
    """SQLite's SQLITE_FULL: the disk (or the file size limit) left no room to write."""
    return exc.sqlite_errorcode == sqlite3.SQLITE_FULL


def _empty_totals() -> Totals:
    return {origin: OriginTotals(0, 0) for origin in ORIGINS}


class Index(ABC):
    """What the store and eviction need of a blob index: SQLite under storage.path (BlobIndex) or, for replicas
    on one bucket, Redis (cache/redis_index.py). It keeps the totals per origin in memory and tells listeners."""

    # Whether processes on other hosts share it (Redis): then no start-up reconciles it and it keeps no
    # clean-shutdown flag (one replica's stop says nothing of the others'); the eviction leader rebuilds it when
    # lost or never built (needs_rebuild), and its GC reconciles the rest.
    shared = False

    def __init__(self) -> None:
        self._totals: Totals = _empty_totals()
        self._listeners: list[TotalsListener] = []
        self._disk_full_listeners: list[Callable[[int], None]] = []

    def subscribe(self, listener: TotalsListener) -> None:
        """Call listener(totals) on the event loop after every change of the index."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: TotalsListener) -> None:
        self._listeners.remove(listener)

    def on_disk_full(self, listener: Callable[[int], None]) -> None:
        """Call listener(bytes needed, 0 if unknown) whenever a write reports a full disk."""
        self._disk_full_listeners.append(listener)

    def off_disk_full(self, listener: Callable[[int], None]) -> None:
        self._disk_full_listeners.remove(listener)

    def report_disk_full(self, needed: int = 0) -> None:
        """Tell the listeners a write failed with ENOSPC; callers go through Store.report_disk_full."""
        for listener in list(self._disk_full_listeners):
            listener(needed)

    def _notify(self) -> None:
        totals = self.totals()
        for listener in list(self._listeners):
            listener(totals)

    def totals(self) -> Totals:
        """Bytes and blobs per origin, from the running totals (no query)."""
        return dict(self._totals)

    def needs_rebuild(self) -> bool:
        """Whether the index lost its rows since it was built (Redis lost its data) and must be rebuilt from
        the blobs (eviction/reconcile.py), after which rebuilt() says so."""
        return False

    async def rebuilt(self) -> None:
        """The index was rebuilt from the blobs (SQLite needs no marker: its file is the marker)."""
        return None

    @abstractmethod
    async def open(self) -> bool:
        """Open the index; True if it was missing and must be rebuilt from the blobs."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def refresh_if_changed(self) -> None:
        """Re-read the totals if another process changed the index, and tell the listeners."""

    @abstractmethod
    async def add(self, digest: str, size: int, origin: str) -> None:
        """Index a committed blob; it counts as used now. Pushed wins over cached; recency only moves forward."""

    @abstractmethod
    async def add_many(self, rows: Iterable[BlobRow], still_there: Callable[[str], bool]) -> list[BlobRow]:
        """Index blobs found stored (reconcile), each only if still_there(digest); returns those added."""

    @abstractmethod
    async def touch_many(self, accesses: dict[str, float]) -> None:
        """Record many accesses (digest -> time) at once."""

    @abstractmethod
    async def remove_unchanged(self, rows: Iterable[BlobRow], remove_file: Callable[[str], None]) -> list[BlobRow]:
        """Remove each blob whose row is still exactly as given, its bytes (remove_file, blocking) before its
        row; a commit of the same digest meanwhile keeps its bytes and its row. Returns the rows removed."""

    @abstractmethod
    async def remove_missing(self, digests: Iterable[str], still_missing: Callable[[str], bool]) -> list[BlobRow]:
        """Drop the rows whose blob is gone (still_missing(digest) re-checked); returns those dropped."""

    @abstractmethod
    async def promote(self, digests: Iterable[str]) -> list[str]:
        """Mark cached blobs as pushed (never evicted); returns those changed."""

    @abstractmethod
    async def get(self, digest: str) -> BlobRow | None: ...

    @abstractmethod
    async def rows(self, origin: str | None = None) -> list[BlobRow]:
        """Every row (of one origin)."""

    @abstractmethod
    async def least_recent(self, limit: int) -> list[BlobRow]:
        """Cached blobs, least recently used first: eviction's candidates."""

    @abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None: ...


class BlobIndex(Index):
    """Async facade over the SQLite index; every call runs on the index's own thread."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullcache-index")
        self._db: sqlite3.Connection | None = None
        self._data_version = 0

    # ------------------------------------------------------------------ plumbing
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise StoreFullError(errno.ENOSPC, f"index {self.path.name}: {exc}") from exc
            raise

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a writing function on the index thread, then tell the listeners the new totals."""
        result = await self._run(fn, *args)
        self._notify()
        return result

    def _connect(self) -> bool:
        """Open (creating if missing); returns True when the file did not exist, i.e. needs a rebuild."""
        created = not self.path.exists()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._reload_totals()
        return created

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "BlobIndex.open() was not awaited"
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so what a transaction
        checks stays true until it commits, even against another process. If it fails, the commit
        included (a full disk), nothing of it stays: neither in the database nor in the totals."""
        totals = self._totals
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self._totals = totals
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    async def open(self) -> bool:
        """Open the index; True if it was missing and must be rebuilt from the files."""
        return await self._run(self._connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self.db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ totals
    def _reload_totals(self) -> None:
        totals = _empty_totals()
        for origin, size, count in self.db.execute(
                "SELECT origin, COALESCE(SUM(size), 0), COUNT(*) FROM blobs GROUP BY origin"):
            totals[origin] = OriginTotals(size, count)
        self._totals = totals
        self._data_version = self.db.execute("PRAGMA data_version").fetchone()[0]

    def _reload_if_changed(self) -> bool:
        # data_version changes only when another connection committed; our own writes keep it.
        if self.db.execute("PRAGMA data_version").fetchone()[0] == self._data_version:
            return False
        self._reload_totals()
        return True

    async def refresh_if_changed(self) -> None:
        """Re-read the totals if another process (e.g. `pullcache gc`) changed the index."""
        if await self._run(self._reload_if_changed):
            self._notify()

    def _account(self, old: BlobRow | None, new: BlobRow | None) -> None:
        """Move the running totals from a row's old state to its new one (None: no row)."""
        totals = dict(self._totals)
        for row, sign in ((old, -1), (new, 1)):
            if row is not None:
                current = totals[row.origin]
                totals[row.origin] = OriginTotals(current.bytes + sign * row.size, current.blobs + sign)
        self._totals = totals

    # ------------------------------------------------------------------ writes
    def _upsert(self, digest: str, size: int, origin: str, last_access: float) -> None:
        """Insert or merge one row inside a transaction, keeping the totals right."""
        old = self._get(digest)
        self.db.execute(_UPSERT, (digest, size, origin, last_access, time.time()))
        self._account(old, self._get(digest))

    def _add(self, digest: str, size: int, origin: str, now: float) -> None:
        with self._transaction():
            self._upsert(digest, size, origin, now)

    async def add(self, digest: str, size: int, origin: str) -> None:
        """Index a committed blob; it counts as used now."""
        await self._write(self._add, digest, size, origin, time.time())

    def _add_many(self, rows: list[BlobRow], still_there: Callable[[str], bool]) -> list[BlobRow]:
        added = []
        with self._transaction():
            for row in rows:
                if still_there(row.digest):
                    self._upsert(row.digest, row.size, row.origin, row.last_access)
                    added.append(row)
        return added

    async def add_many(self, rows: Iterable[BlobRow], still_there: Callable[[str], bool]) -> list[BlobRow]:
        """Index files found on disk (reconcile). still_there(digest) is checked inside the write
        transaction, so a file removed since it was found does not get a row."""
        return await self._write(self._add_many, list(rows), still_there)

    def _touch_many(self, accesses: list[tuple[float, str]]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE blobs SET last_access = MAX(last_access, ?) WHERE digest = ?", accesses)

    async def touch_many(self, accesses: dict[str, float]) -> None:
        """Record many accesses in one transaction (recency is batched by the caller)."""
        if accesses:
            await self._run(self._touch_many, [(t, d) for d, t in accesses.items()])

    def _remove_unchanged(self, rows: list[BlobRow], remove_file: Callable[[str], None]) -> list[BlobRow]:
        removed = []
        with self._transaction() as db:
            for row in rows:
                if self._get(row.digest) != row:
                    continue  # used, re-added or promoted to pushed since it was chosen: keep it
                try:
                    remove_file(row.digest)
                except OSError:
                    continue  # the file could not go, so neither does its row
                db.execute("DELETE FROM blobs WHERE digest = ?", (row.digest,))
                self._account(row, None)
                removed.append(row)
        return removed

    async def remove_unchanged(self, rows: Iterable[BlobRow], remove_file: Callable[[str], None]) -> list[BlobRow]:
        """Remove each blob whose row is still exactly as given: file first, then row, both under
        the write lock. A commit of the same digest either finished before (its row changed, so the
        blob stays) or waits for the lock and finds the file gone (so it publishes it again), and a
        `pullcache gc` in another process is held off the same way. Returns the rows removed.

        Works on a full disk: the files go before the commit, so their space is free for it. If the
        commit fails all the same (a file still open for a response frees its space only when closed),
        this raises StoreFullError and the rows stay, unchanged, for the next pass to remove."""
        return await self._write(self._remove_unchanged, list(rows), remove_file)

    def _remove_missing(self, digests: list[str], still_missing: Callable[[str], bool]) -> list[BlobRow]:
        removed = []
        with self._transaction() as db:
            for digest in digests:
                old = self._get(digest)
                if old is not None and still_missing(digest):
                    db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
                    self._account(old, None)
                    removed.append(old)
        return removed

    async def remove_missing(self, digests: Iterable[str], still_missing: Callable[[str], bool]) -> list[BlobRow]:
        """Drop rows whose file is gone (reconcile); still_missing(digest) is checked under the
        write lock, so a blob published since the scan keeps its row."""
        return await self._write(self._remove_missing, list(digests), still_missing)

    def _promote(self, digests: list[str]) -> list[str]:
        promoted = []
        with self._transaction() as db:
            for digest in digests:
                old = self._get(digest)
                if old is not None and old.origin == CACHED:
                    db.execute("UPDATE blobs SET origin = 'pushed' WHERE digest = ?", (digest,))
                    self._account(old, BlobRow(old.digest, old.size, PUSHED, old.last_access))
                    promoted.append(digest)
        return promoted

    async def promote(self, digests: Iterable[str]) -> list[str]:
        """Mark cached blobs as pushed (a local manifest references them: never evict them)."""
        return await self._write(self._promote, list(digests))

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._set_meta, key, value)

    # ------------------------------------------------------------------ reads
    def _get(self, digest: str) -> BlobRow | None:
        row = self.db.execute("SELECT digest, size, origin, last_access FROM blobs WHERE digest = ?",
                              (digest,)).fetchone()
        return BlobRow(*row) if row else None

    async def get(self, digest: str) -> BlobRow | None:
        return await self._run(self._get, digest)

    def _get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self._get_meta, key)

    def _rows(self, origin: str | None) -> list[BlobRow]:
        query = "SELECT digest, size, origin, last_access FROM blobs"
        cursor = self.db.execute(query + " WHERE origin = ?", (origin,)) if origin else self.db.execute(query)
        return [BlobRow(*row) for row in cursor]

    async def rows(self, origin: str | None = None) -> list[BlobRow]:
        """Every row (of one origin): what reconcile and GC compare with the disk."""
        return await self._run(self._rows, origin)

    def _least_recent(self, limit: int) -> list[BlobRow]:
        rows = self.db.execute(
            "SELECT digest, size, origin, last_access FROM blobs WHERE origin = 'cached' "
            "ORDER BY last_access ASC LIMIT ?", (limit,)).fetchall()
        return [BlobRow(*row) for row in rows]

    async def least_recent(self, limit: int) -> list[BlobRow]:
        """Cached blobs, least recently used first: eviction's candidates."""
        return await self._run(self._least_recent, limit)
