"""Blobs of upstream repositories: one upstream fetch per digest, streamed to every client as it lands.

The first request for a missing digest starts the only fetch, a task of its own that outlives any
one request; its bytes go into a Fill, and that request and every one arriving while the fetch runs
read the Fill as it grows. A verified fill is committed to the store as cached content; a failed
one leaves nothing behind.

A cached blob belongs to no repository: it is served to any upstream repository that asks for its
digest (a digest names one content), so no per-repository link is written for it.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from pullcache import metrics
from pullcache.cache.files import StoreFullError
from pullcache.cache.fill import Fill, FillReader
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.pullthrough import stats
from pullcache.resolver import Target

log = logging.getLogger("pullcache.pullthrough")


@dataclass(frozen=True)
class BlobSource:
    """Where a blob request reads from: its committed file, already open (file, size), or a fill (reader).

    Use `async with`: leaving it closes the file or the reader.
    """

    result: str
    file: BinaryIO | None = None
    size: int | None = None
    reader: FillReader | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.file is not None:
            await asyncio.to_thread(self.file.close)


def _open_committed(path: Path) -> tuple[BinaryIO, int] | None:
    """The blob file open for reading and its size; None if it is gone (evicted since the caller looked)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 (handed to the caller, who closes it)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return file, os.fstat(file.fileno()).st_size


class Blobs:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._fills: dict[Digest, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, target: Target, digest: Digest) -> BlobSource:
        """The blob, counted once: its committed file, opened, or a reader of its fill (joined, or started now).

        A cached file is a hit only once it is open: eviction may remove it at any moment, and an open
        file stays readable, while one removed between the stat and the open is fetched again instead
        of answered 404. From the look at the running fills to the new reader nothing awaits, so no
        fill can finish in between.
        """
        assert target.upstream is not None, "Blobs serves upstream targets only"
        if self._store.blob_size(digest) is not None:  # a stat is cheap; the open runs in a thread
            opened = await asyncio.to_thread(_open_committed, self._store.blob_path(digest))
            if opened is not None:
                self._store.note_access(digest)
                stats.count(stats.BLOB, target.upstream.name, stats.HIT)
                return BlobSource(stats.HIT, file=opened[0], size=opened[1])
        fill = self._fills.get(digest)
        result = stats.COALESCED
        if fill is None:
            fill = self._start(target, digest)
            result = stats.MISS
        stats.count(stats.BLOB, target.upstream.name, result)
        return BlobSource(result, reader=fill.reader())

    async def head(self, target: Target, digest: Digest, *, ask_upstream: bool = True) -> tuple[int, str] | None:
        """(size, result) without fetching a body: from the store, a running fill, or (if ask_upstream)
        an upstream HEAD; None when only the store and fills were asked and neither has it."""
        assert target.upstream is not None, "Blobs serves upstream targets only"
        size = self._store.blob_size(digest)
        result = stats.HIT
        if size is None:
            fill = self._fills.get(digest)
            size = fill.size if fill is not None else None
            result = stats.COALESCED
        if size is None and not ask_upstream:
            return None
        if size is None:
            size = await target.upstream.head_blob(target.repository, str(digest))
            result = stats.MISS
        stats.count(stats.BLOB, target.upstream.name, result)
        return size, result

    def _start(self, target: Target, digest: Digest) -> Fill:
        fill = Fill(self._store, digest, origin=CACHED)
        self._fills[digest] = fill
        task = asyncio.get_running_loop().create_task(self._fetch(target, fill))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _fetch(self, target: Target, fill: Fill) -> None:
        """The one upstream fetch of fill.digest; ends committed or failed, whoever is still reading."""
        assert target.upstream is not None
        digest = fill.digest
        metrics.inflight_fetches.inc()
        try:
            async with target.upstream.open_blob(target.repository, str(digest)) as stream:
                await fill.begin(stream.size)
                async for chunk in stream.chunks():
                    await fill.write(chunk)
            await fill.commit()
        except BaseException as exc:
            self._ended(digest)  # before any await: nobody may join a fill that is failing
            await fill.fail(exc)
            if isinstance(exc, StoreFullError):  # whether or not a request is still there to say so
                await fill.closed()  # until then the failed fill still holds its space: eviction could not even write
                self._store.index.report_disk_full(fill.size if fill.size is not None else fill.written)
            if not isinstance(exc, Exception):
                raise
            log.warning("blob %s of %s: fetch failed, nothing cached: %s", digest, target.store_name, exc)
            return
        self._ended(digest)  # committed: from now on requests find the blob in the store

    def _ended(self, digest: Digest) -> None:
        self._fills.pop(digest, None)
        metrics.inflight_fetches.dec()

    async def close(self) -> None:
        """Cancel fetches still running (shutdown); their readers see a failed fill."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fill in list(self._fills.values()):  # a task cancelled before its first step never failed its fill
            await fill.fail(asyncio.CancelledError())
        self._fills.clear()
