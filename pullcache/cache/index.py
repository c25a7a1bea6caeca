"""The blob index: size, origin (pushed or cached) and last access of every blob, in SQLite.

The files are the truth and this index is derived from them (eviction/reconcile rebuilds it).
All SQLite work runs on one dedicated thread, so the event loop never waits on the database
and the connection is only ever used by the thread that made it. WAL mode lets a `pullcache gc`
process read and write alongside a running server.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

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


@dataclass(frozen=True)
class BlobRow:
    digest: str
    size: int
    origin: str
    last_access: float


@dataclass(frozen=True)
class OriginTotals:
    bytes: int
    blobs: int


class BlobIndex:
    """Async facade over the SQLite index; every call runs on the index's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullcache-index")
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ plumbing
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> bool:
        """Open (creating if missing); returns True when the file did not exist, i.e. needs a rebuild."""
        created = not self.path.exists()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        return created

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "BlobIndex.open() was not awaited"
        return self._db

    async def open(self) -> bool:
        """Open the index; True if it was missing and must be rebuilt from the files."""
        return await self._run(self._connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self.db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the index thread, for queries owned by other modules (eviction)."""
        return await self._run(lambda: fn(self.db))

    # ------------------------------------------------------------------ writes
    def _add(self, digest: str, size: int, origin: str, now: float) -> None:
        # Pushed wins: a blob that was cached and is then pushed must never be evicted.
        self.db.execute(
            "INSERT INTO blobs (digest, size, origin, last_access, created) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(digest) DO UPDATE SET size = excluded.size, last_access = excluded.last_access, "
            "origin = CASE WHEN blobs.origin = 'pushed' OR excluded.origin = 'pushed' THEN 'pushed' ELSE 'cached' END",
            (digest, size, origin, now, now))

    async def add(self, digest: str, size: int, origin: str) -> None:
        await self._run(self._add, digest, size, origin, time.time())

    def _touch_many(self, accesses: list[tuple[float, str]]) -> None:
        with self.db:
            self.db.executemany("UPDATE blobs SET last_access = MAX(last_access, ?) WHERE digest = ?", accesses)

    async def touch_many(self, accesses: dict[str, float]) -> None:
        """Record many accesses in one transaction (recency is batched by the caller)."""
        if accesses:
            await self._run(self._touch_many, [(t, d) for d, t in accesses.items()])

    def _remove_many(self, digests: list[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in digests])

    async def remove_many(self, digests: Iterable[str]) -> None:
        await self._run(self._remove_many, list(digests))

    # ------------------------------------------------------------------ reads
    def _get(self, digest: str) -> BlobRow | None:
        row = self.db.execute("SELECT digest, size, origin, last_access FROM blobs WHERE digest = ?",
                              (digest,)).fetchone()
        return BlobRow(*row) if row else None

    async def get(self, digest: str) -> BlobRow | None:
        return await self._run(self._get, digest)

    def _totals(self) -> dict[str, OriginTotals]:
        totals = {origin: OriginTotals(0, 0) for origin in ORIGINS}
        for origin, size, count in self.db.execute(
                "SELECT origin, COALESCE(SUM(size), 0), COUNT(*) FROM blobs GROUP BY origin"):
            totals[origin] = OriginTotals(size, count)
        return totals

    async def totals(self) -> dict[str, OriginTotals]:
        return await self._run(self._totals)

    def _least_recent(self, limit: int) -> list[BlobRow]:
        rows = self.db.execute(
            "SELECT digest, size, origin, last_access FROM blobs WHERE origin = 'cached' "
            "ORDER BY last_access ASC LIMIT ?", (limit,)).fetchall()
        return [BlobRow(*row) for row in rows]

    async def least_recent(self, limit: int) -> list[BlobRow]:
        """Cached blobs, least recently used first: eviction's candidates."""
        return await self._run(self._least_recent, limit)
