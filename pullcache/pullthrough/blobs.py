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

Processes sharing a store (several on one storage.path, or replicas on one bucket) share fetches too when
`cluster.advertise` is set (fill_leases.py): a fill first takes the blob's lease, or finds the process
holding it and relays that process's fill (counted `coalesced`), and that one serves its fills to its peers
(peer_reader, api/peer_fills.py). A relayed fill verifies the digest like any other before its last byte
goes out, and is cut when the relay breaks. A new fill's requests wait for its role (fetch, relay, or
nothing to do: the blob was committed meanwhile) before they read it.

A blob larger than storage.max_size could only be cached by evicting everything and still not fit,
so its fetch ends as soon as the upstream's headers announce its size (BlobTooLarge, answered 507),
or, when they announce none, as soon as more than max_size has arrived. It asks eviction for nothing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable
from dataclasses import dataclass

from pullcache import metrics
from pullcache.cache.files import StoreFullError
from pullcache.cache.fill import Fill, FillFailed, FillReader
from pullcache.cache.index import CACHED
from pullcache.cache.registry import CACHE, UPSTREAM, BlobBody
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.pullthrough import stats
from pullcache.pullthrough.fill_leases import Claim, FillLeases, Follow, Lead, Stored
from pullcache.pullthrough.missing import SharedMissing
from pullcache.pullthrough.relayed_fill import RelayableFill
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


LEAD = "lead"  # this process fetches from the upstream
FOLLOW = "follow"  # it relays another process's fill
STORED = "stored"  # another process committed the blob meanwhile: nothing to fetch, look in the store


class CommittedElsewhere(Exception):
    """A fill that ended before it began: another process committed the blob meanwhile."""


@dataclass(frozen=True)
class _Flight:
    """A running fetch, the target (upstream repository) it asks, and its role once decided."""

    fill: RelayableFill
    target: Target
    role: asyncio.Future[str]


def _not_ours(cause: BaseException | None, theirs: Target, ours: Target) -> bool:
    """Whether a failure of a fetch for `theirs` (another repository of our upstream) says nothing about the
    same digest in `ours`: only a refusal of that repository (not found, denied) does not. An outage of our
    upstream, a full disk and the like are everyone's."""
    return theirs.store_name != ours.store_name and isinstance(cause, (UpstreamNotFound, UpstreamUnauthorized))


def _flight_key(target: Target, digest: Digest) -> tuple[str, Digest]:
    """Fetches are shared per upstream: the upstream's name and the digest."""
    assert target.upstream is not None, "Blobs serves upstream targets only"
    return target.upstream.name, digest


def _decide(flight: _Flight, role: str) -> None:
    """Say how the flight's fill is produced; an upstream fetch (LEAD) counts in pullcache_inflight_fetches
    until it ended."""
    flight.role.set_result(role)
    if role == LEAD:
        metrics.inflight_fetches.inc()


def _impossible_size(digest: Digest, size: int | None) -> bool:
    """Whether an announced size cannot be the digest's: only the empty blob has 0 bytes."""
    return size == 0 and digest != Digest.of(b"", digest.algorithm)


class Blobs:
    def __init__(self, store: Store, *, max_size: int, leases: FillLeases | None = None) -> None:
        self._store = store
        self._max_size = max_size  # storage.max_size: no larger blob is fetched
        self._leases = leases  # None: fills are shared within this process only
        self._fills: dict[tuple[str, Digest], _Flight] = {}  # by _flight_key: fetches never cross upstreams
        self._tasks: set[asyncio.Task[None]] = set()
        self._missing = SharedMissing(store.state)  # upstream 404s, per upstream repository (shared by replicas)

    async def open(self, target: Target, digest: Digest) -> BlobBody:
        """The blob, counted once: its committed file, opened, or a reader of its fill (joined, or started now).

        A cached file is a hit only once it is open: eviction may remove it at any moment, and an open
        file stays readable, while one removed between the stat and the open is fetched again instead
        of answered 404. From the look at the running fills to the new reader nothing awaits, so no
        fill can finish in between. Only a fetch from the same upstream is joined; one for another of its
        repositories only once it has begun (or failed for reasons that are ours too, see _not_ours);
        otherwise this request fetches itself. A fill that relays another process's is coalesced, even for
        the request that started it.
        """
        assert target.upstream is not None, "Blobs serves upstream targets only"
        while True:
            if self._store.blob_size(digest) is not None:  # a stat is cheap; the open runs in a thread
                opened = await self._store.open_blob(digest)
                if opened is not None:
                    self._store.note_access(digest)
                    stats.count(stats.BLOB, target.upstream.name, stats.HIT)
                    return BlobBody(CACHE, stats.HIT, blob=opened)
            if _flight_key(target, digest) not in self._fills:  # a remembered 404 (maybe another replica's)
                await self._missing.raise_if_known(target, str(digest))
            flight = self._fills.get(_flight_key(target, digest))  # looked up again: the look above may wait
            started = flight is None
            if flight is None:
                flight = self._start(target, digest)
            reader = flight.fill.reader()
            role = await self._role(flight, reader)
            if role == STORED:
                continue
            if started:
                result = stats.MISS if role == LEAD else stats.COALESCED
                stats.count(stats.BLOB, target.upstream.name, result)
                return BlobBody(UPSTREAM, result, reader=reader)
            if flight.target.store_name == target.store_name or not await self._refused_elsewhere(
                    reader, flight.target, target):
                stats.count(stats.BLOB, target.upstream.name, stats.COALESCED)
                return BlobBody(UPSTREAM, stats.COALESCED, reader=reader)
            # That fetch has ended (it is no longer in _fills): look again, and fetch for ourselves.

    @staticmethod
    async def _role(flight: _Flight, reader: FillReader) -> str:
        """The flight's role, once decided (at once without cross-process fills); the reader is closed if
        the blob turned out stored or the wait was cancelled."""
        if not flight.role.done():
            try:
                await asyncio.shield(flight.role)
            except BaseException:
                reader.close()
                raise
        role = flight.role.result()
        if role == STORED:
            reader.close()
        return role

    async def peer_reader(self, upstream: str, digest: Digest) -> FillReader | None:
        """A reader of the fill of `digest` this process fetches from `upstream`, for a peer to relay; None if
        it fetches none (it ended, or this process relays it too). The caller closes it."""
        flight = self._fills.get((upstream, digest))
        if flight is None:
            return None
        reader = flight.fill.reader()
        if await self._role(flight, reader) != LEAD:
            reader.close()
            return None
        return reader

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
        if size is None:  # committed by another process since this one looked (a replica on the bucket)?
            size, result = await self._store.find_blob_size(digest), stats.HIT
        if size is None and not ask_upstream:
            return None
        if size is None:
            size = await target.upstream.head_blob(target.repository, str(digest))
            result = stats.MISS
        stats.count(stats.BLOB, target.upstream.name, result)
        return size, result

    def _start(self, target: Target, digest: Digest) -> _Flight:
        flight = _Flight(RelayableFill(self._store, digest, origin=CACHED), target,
                         asyncio.get_running_loop().create_future())
        if self._leases is None:
            _decide(flight, LEAD)
        self._fills[_flight_key(target, digest)] = flight
        task = asyncio.get_running_loop().create_task(self._produce(target, flight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _claim(self, target: Target, flight: _Flight) -> Claim:
        """Where the fill's bytes come from, said to its readers through its role."""
        if self._leases is None:
            return Lead(None)
        assert target.upstream is not None
        digest = flight.fill.digest
        claim = await self._leases.claim(target.upstream.name, digest, lambda: self._committed(digest))
        _decide(flight, STORED if isinstance(claim, Stored) else FOLLOW if isinstance(claim, Follow) else LEAD)
        return claim

    async def _committed(self, digest: Digest) -> bool:
        """Whether the store holds the blob, asked of the backend itself: another process may have committed
        it (on S3, one this process's map of sizes does not know yet)."""
        opened = await self._store.open_blob(digest, body=False)
        if opened is None:
            return False
        await opened.close()
        return True

    async def _produce(self, target: Target, flight: _Flight) -> None:
        """The one fetch of fill.digest in this process, from the upstream or relayed from the process holding
        its lease; ends committed or failed, whoever is still reading."""
        fill, digest = flight.fill, flight.fill.digest
        lease = None
        try:
            claim = await self._claim(target, flight)
            if isinstance(claim, Stored):
                self._ended(target, flight)  # every request that waited for the role looks in the store again
                await fill.fail(CommittedElsewhere(f"blob {digest} was committed by another process"))
                return
            if isinstance(claim, Follow):
                await self._relay(target, fill, claim)
            else:
                lease = claim.lease
                await self._fetch(target, fill)
            await fill.commit()
            self._ended(target, flight)  # committed: from now on requests find the blob in the store
        except BaseException as exc:
            if not flight.role.done():  # cancelled while claiming: it fails like a fetch of its own
                _decide(flight, LEAD)
            self._ended(target, flight)  # before any await: nobody may join a fill that is failing
            if isinstance(exc, UpstreamNotFound):
                await self._missing.remember(target, str(digest), exc)
            await fill.fail(exc)
            if isinstance(exc, StoreFullError):  # whether or not a request is still there to say so
                await fill.closed()  # until then the failed fill still holds its space: eviction could not even write
                self._store.report_disk_full(fill.size if fill.size is not None else fill.written)
            if not isinstance(exc, Exception):
                raise
            log.warning("blob %s of %s: fetch failed, nothing cached: %s", digest, target.store_name, exc)
        finally:
            if lease is not None:  # after the commit: a peer that takes it next finds the blob stored
                await lease.release()

    async def _relay(self, target: Target, fill: RelayableFill, follow: Follow) -> None:
        """The holder's fill into ours, up to (not including) the verification; cut if its lease lapses first."""
        assert target.upstream is not None and self._leases is not None
        fill.relayed = True
        watch = asyncio.create_task(self._leases.watch(target.upstream.name, fill.digest, follow,
                                                       lambda: self._committed(fill.digest)))
        try:
            async with follow.stream as stream:
                await fill.begin(stream.size)
                await self._write_all(fill, stream.chunks())
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _fetch(self, target: Target, fill: Fill) -> None:
        """The upstream fetch of fill.digest into the fill, up to (not including) its commit."""
        assert target.upstream is not None
        digest = fill.digest
        async with target.upstream.open_blob(target.repository, str(digest)) as stream:
            if stream.size is not None and stream.size > self._max_size:
                raise BlobTooLarge(digest, self._max_size, stream.size)  # the body is left unread
            if _impossible_size(digest, stream.size):
                raise UpstreamError(target.upstream.name, "an empty body (Content-Length: 0) cannot have "
                                                          "that digest", 200)
            await fill.begin(stream.size)
            await self._write_all(fill, stream.chunks())

    async def _write_all(self, fill: Fill, chunks: AsyncIterable[bytes]) -> None:
        async for chunk in chunks:
            await fill.write(chunk)
            if fill.written > self._max_size:
                raise BlobTooLarge(fill.digest, self._max_size, None)

    def _ended(self, target: Target, flight: _Flight) -> None:
        """Take the flight out of the running fills, once (whichever path ends it)."""
        key = _flight_key(target, flight.fill.digest)
        if self._fills.get(key) is flight:
            del self._fills[key]
            if flight.role.result() == LEAD:
                metrics.inflight_fetches.dec()

    async def close(self) -> None:
        """Cancel fetches still running (shutdown); their readers see a failed fill."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flight in list(self._fills.values()):  # a task cancelled before its first step never failed its fill
            if not flight.role.done():
                _decide(flight, LEAD)
            self._ended(flight.target, flight)
            await flight.fill.fail(asyncio.CancelledError())
        if self._leases is not None:
            await self._leases.close()
