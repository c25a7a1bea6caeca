"""Blobs of upstream repositories: one fetch per upstream and digest, streamed to every client as it lands.

The first request for a missing digest starts the only fetch of it from its upstream, a task of its
own that outlives any one request; its bytes go into a Fill, and that request and every one arriving
for the same upstream while the fetch runs read the Fill as it grows. A verified fill is committed to
the store as cached content, served from then on to whoever asks (a digest names one content); a
failed one leaves nothing behind. An upstream 404 is remembered for the upstream's `not_found_ttl`, per
repository (missing.py): until then that repository's requests are answered BLOB_UNKNOWN without asking.

Requests for the same digest from different upstreams never share a fetch: a slow or hostile upstream
must not stall, or answer for, the clients of another. Within one upstream a request joins a fetch for
any repository, so no per-repository link is written for a cached blob; when such a fetch fails before
its first byte because the upstream refused *its* repository (not found, denied), the requests of other
repositories fetch for themselves instead of sharing a refusal that is not theirs.

An upstream whose headers announce a size the digest cannot have (0 bytes for anything but the empty
blob) is refused before a byte is read: the fill fails with an UpstreamError, answered 502.

A blob larger than storage.max_size could only be cached by evicting everything and still not fit,
so its fetch ends as soon as the upstream's headers announce its size (BlobTooLarge, answered 507),
or, when they announce none, as soon as more than max_size has arrived. It asks eviction for nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Self

from pullcache import metrics
from pullcache.cache.backends import OpenedBlob
from pullcache.cache.files import StoreFullError
from pullcache.cache.fill import Fill, FillFailed, FillReader
from pullcache.cache.index import CACHED
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.pullthrough import stats
from pullcache.pullthrough.missing import Missing
from pullcache.resolver import Target
from pullcache.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
)

log = logging.getLogger("pullcache.pullthrough")


class BlobTooLarge(Exception):
    """The upstream's blob is larger than storage.max_size, the bound on all cached content."""

    def __init__(self, digest: Digest, max_size: int, size: int | None) -> None:
        what = f"is {size} bytes" if size is not None else "sent no size and passed it"
        super().__init__(f"blob {digest} {what}, more than storage.max_size ({max_size} bytes) allows to cache")
        self.digest = digest


@dataclass(frozen=True)
class BlobSource:
    """Where a blob request reads from: the committed blob, already open (blob), or a fill (reader).

    Use `async with`: leaving it closes the blob or the reader.
    """

    result: str
    blob: OpenedBlob | None = None
    reader: FillReader | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.blob is not None:
            await self.blob.close()


@dataclass(frozen=True)
class _Flight:
    """A running fetch and the target (upstream repository) it asks."""

    fill: Fill
    target: Target


def _not_ours(cause: BaseException | None, theirs: Target, ours: Target) -> bool:
    """Whether a failure of a fetch for `theirs` (another repository of our upstream) says nothing about the
    same digest in `ours`: only a refusal of that repository (not found, denied) does not. An outage of our
    upstream, a full disk and the like are everyone's."""
    return theirs.store_name != ours.store_name and isinstance(cause, (UpstreamNotFound, UpstreamUnauthorized))


def _flight_key(target: Target, digest: Digest) -> tuple[str, Digest]:
    """Fetches are shared per upstream: the upstream's name and the digest."""
    assert target.upstream is not None, "Blobs serves upstream targets only"
    return target.upstream.name, digest


def _impossible_size(digest: Digest, size: int | None) -> bool:
    """Whether an announced size cannot be the digest's: only the empty blob has 0 bytes."""
    return size == 0 and digest != Digest.of(b"", digest.algorithm)


class Blobs:
    def __init__(self, store: Store, *, max_size: int) -> None:
        self._store = store
        self._max_size = max_size  # storage.max_size: no larger blob is fetched
        self._fills: dict[tuple[str, Digest], _Flight] = {}  # by _flight_key: fetches never cross upstreams
        self._tasks: set[asyncio.Task[None]] = set()
        self._missing = Missing()  # upstream 404s, per upstream repository

    async def open(self, target: Target, digest: Digest) -> BlobSource:
        """The blob, counted once: its committed file, opened, or a reader of its fill (joined, or started now).

        A cached file is a hit only once it is open: eviction may remove it at any moment, and an open
        file stays readable, while one removed between the stat and the open is fetched again instead
        of answered 404. From the look at the running fills to the new reader nothing awaits, so no
        fill can finish in between. Only a fetch from the same upstream is joined; one for another of its
        repositories only once it has begun (or failed for reasons that are ours too, see _not_ours);
        otherwise this request fetches itself.
        """
        assert target.upstream is not None, "Blobs serves upstream targets only"
        while True:
            if self._store.blob_size(digest) is not None:  # a stat is cheap; the open runs in a thread
                opened = await self._store.open_blob(digest)
                if opened is not None:
                    self._store.note_access(digest)
                    stats.count(stats.BLOB, target.upstream.name, stats.HIT)
                    return BlobSource(stats.HIT, blob=opened)
            flight = self._fills.get(_flight_key(target, digest))
            if flight is None:
                self._missing.raise_if_known(target, str(digest))
                fill = self._start(target, digest)
                stats.count(stats.BLOB, target.upstream.name, stats.MISS)
                return BlobSource(stats.MISS, reader=fill.reader())
            reader = flight.fill.reader()
            if flight.target.store_name == target.store_name or not await self._refused_elsewhere(
                    reader, flight.target, target):
                stats.count(stats.BLOB, target.upstream.name, stats.COALESCED)
                return BlobSource(stats.COALESCED, reader=reader)
            # That fetch has ended (it is no longer in _fills): look again, and fetch for ourselves.

    @staticmethod
    async def _refused_elsewhere(reader: FillReader, theirs: Target, ours: Target) -> bool:
        """Wait for a fetch of another repository to begin; True (and the reader closed) if it failed
        for reasons of its own."""
        try:
            await reader.started()
        except FillFailed as exc:
            if _not_ours(exc.cause, theirs, ours):
                reader.close()
                return True
        except BaseException:
            reader.close()
            raise
        return False

    async def head(self, target: Target, digest: Digest, *, ask_upstream: bool = True) -> tuple[int, str] | None:
        """(size, result) without fetching a body: from the store, a running fill of this upstream, or (if
        ask_upstream) an upstream HEAD; None when only the store and fills were asked and neither has it."""
        assert target.upstream is not None, "Blobs serves upstream targets only"
        size = self._store.blob_size(digest)
        result = stats.HIT
        if size is None:
            flight = self._fills.get(_flight_key(target, digest))
            size = flight.fill.size if flight is not None else None
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
        self._fills[_flight_key(target, digest)] = _Flight(fill, target)
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
                if stream.size is not None and stream.size > self._max_size:
                    raise BlobTooLarge(digest, self._max_size, stream.size)  # the body is left unread
                if _impossible_size(digest, stream.size):
                    raise UpstreamError(target.upstream.name, "an empty body (Content-Length: 0) cannot have "
                                                              "that digest", 200)
                await fill.begin(stream.size)
                async for chunk in stream.chunks():
                    await fill.write(chunk)
                    if fill.written > self._max_size:
                        raise BlobTooLarge(digest, self._max_size, None)
            await fill.commit()
        except BaseException as exc:
            self._ended(target, digest)  # before any await: nobody may join a fill that is failing
            if isinstance(exc, UpstreamNotFound):
                self._missing.remember(target, str(digest), exc)
            await fill.fail(exc)
            if isinstance(exc, StoreFullError):  # whether or not a request is still there to say so
                await fill.closed()  # until then the failed fill still holds its space: eviction could not even write
                self._store.report_disk_full(fill.size if fill.size is not None else fill.written)
            if not isinstance(exc, Exception):
                raise
            log.warning("blob %s of %s: fetch failed, nothing cached: %s", digest, target.store_name, exc)
            return
        self._ended(target, digest)  # committed: from now on requests find the blob in the store

    def _ended(self, target: Target, digest: Digest) -> None:
        self._fills.pop(_flight_key(target, digest), None)
        metrics.inflight_fetches.dec()

    async def close(self) -> None:
        """Cancel fetches still running (shutdown); their readers see a failed fill."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flight in list(self._fills.values()):  # a task cancelled before its first step never failed its fill
            await flight.fill.fail(asyncio.CancelledError())
        self._fills.clear()
