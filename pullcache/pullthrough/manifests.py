"""Manifests of upstream repositories: cached byte-for-byte, tags kept fresh by HEAD revalidation.

- By digest: immutable, so a cached manifest is served until eviction removes it.
- By tag: served from the cache for the upstream's `manifest_ttl`; after it, one HEAD asks the
  upstream which digest the tag names now (Docker Hub does not count HEADs against its pull limit),
  and the body is fetched only if that digest is not already held. While the upstream fails, times
  out or throttles, the cached tag is served stale, and asked about again only every
  STALE_RETRY_SECONDS, so pulls do not each wait for a sick upstream to time out.
- An upstream 404 is remembered for `not_found_ttl`, so a storm of requests for a missing tag does
  not become a storm upstream; concurrent misses and revalidations of one reference share one
  upstream exchange.

Tag state (digest, media type, last confirmation) is the store's: in memory, seeded from the store on
first use, so a cached tag within its ttl costs no upstream request and no disk access; for replicas on
one bucket, read through the cache they share on each request (the store's `state` says which). Tags
learned from a HEAD and awaiting their manifest live in the store's state too, with their ttl, so a HEAD
on one replica and the GET by digest on another are linked.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

from cachetools import TTLCache

from pullcache.cache.index import CACHED
from pullcache.cache.repos import Repository
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.manifest_check import CHECK_INLINE_BYTES, ManifestInvalid, check_manifest
from pullcache.pullthrough import stats
from pullcache.pullthrough.flight import SingleFlight
from pullcache.pullthrough.manifest_leases import ManifestLeases
from pullcache.pullthrough.missing import SharedMissing
from pullcache.resolver import Target
from pullcache.upstream.client import ManifestResponse
from pullcache.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
)

log = logging.getLogger("pullcache.pullthrough")

MEMORY_ENTRIES = 100_000   # tags and manifest media types remembered in memory (the disk holds them all)
PENDING_TAG_SECONDS = 60   # how long a tag learned from a HEAD waits for its manifest to be fetched by digest
STALE_RETRY_SECONDS = 10   # after a failed revalidation, a tag is served stale this long before asking again


@dataclass(frozen=True)
class ManifestAnswer:
    """What a manifest request is answered with, and how it was counted."""

    digest: Digest
    media_type: str
    size: int
    body: bytes | None  # None only for a HEAD answered from the upstream without fetching the body
    result: str         # stats.HIT / MISS / STALE / REVALIDATED / COALESCED


def _pending_key(target: Target, digest: Digest) -> str:
    return f"{target.store_name}@{digest}"


@dataclass(frozen=True)
class _Tag:
    digest: Digest
    media_type: str
    confirmed_at: float  # wall clock, like the tag file's mtime on disk


class Manifests:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 leases: ManifestLeases | None = None) -> None:
        """leases: share upstream exchanges with the other processes on the store (None: within this one)."""
        self._store = store
        self._leases = leases
        self._clock = clock
        self._tags: MutableMapping[tuple[str, str], _Tag] = store.state.memo(MEMORY_ENTRIES)
        self._media_types: MutableMapping[tuple[str, Digest], str] = store.state.memo(MEMORY_ENTRIES)
        self._missing = SharedMissing(store.state)
        # containerd resolves a tag with HEAD, then GETs the digest: remember the tag to link it then.
        self._pending_tags = store.state.expiring("pending-tags", PENDING_TAG_SECONDS, MEMORY_ENTRIES)
        # Tags whose revalidation just failed: served stale without making every pull wait on a sick upstream.
        self._failing: TTLCache[tuple[str, str, str], bool] = TTLCache(MEMORY_ENTRIES, STALE_RETRY_SECONDS,
                                                                       timer=clock)
        self._flights: SingleFlight[ManifestAnswer] = SingleFlight()

    async def close(self) -> None:
        await self._flights.close()

    async def get(self, target: Target, reference: str | Digest, accept: Sequence[str] = (), *,
                  head: bool = False, count: bool = True) -> ManifestAnswer:
        """The manifest `reference` (a tag or a Digest) of an upstream target, counted once.

        head=True: the body may be left unfetched (answer.body None) when the cache lacks it.
        count=False: a further manifest loaded to answer a request already counted (content negotiation).
        Raises the upstream's UpstreamError when the cache cannot answer.
        """
        assert target.upstream is not None, "Manifests serves upstream targets only"
        if isinstance(reference, Digest):
            answer = await self._cached(target, reference)
        else:
            answer = await self._cached_tag(target, reference)
        if answer is not None:  # a hit: no upstream work to prepare
            self._store.note_access(answer.digest)
            if count:
                stats.count(stats.MANIFEST, target.upstream.name, answer.result)
            return answer
        if isinstance(reference, Digest):
            work = partial(self._fetch_digest, target, reference, accept, head)
        else:
            work = partial(self._refresh_tag, target, reference, accept, head)
        await self._missing.raise_if_known(target, str(reference))
        key = (target.upstream.name, target.repository, str(reference), head)
        if self._leases is not None:
            work = partial(self._across_processes, target, reference, head, work)
        answer, leader = await self._flights.run(key, work)
        if not leader:
            answer = replace(answer, result=stats.STALE if answer.result == stats.STALE else stats.COALESCED)
        if answer.body is not None:
            self._store.note_access(answer.digest)
        if count:
            stats.count(stats.MANIFEST, target.upstream.name, answer.result)
        return answer

    async def _across_processes(self, target: Target, reference: str | Digest, head: bool,
                                work: Callable[[], Awaitable[ManifestAnswer]]) -> ManifestAnswer:
        """`work` once across the processes on the store: another process's exchange counts as coalesced."""
        assert self._leases is not None and target.upstream is not None
        key = f"manifest/{target.upstream.name}/{target.repository}/{reference}/{'head' if head else 'get'}"
        answer, led = await self._leases.run(key, work, partial(self._settled, target, reference))
        return answer if led else replace(answer, result=stats.COALESCED)

    async def _settled(self, target: Target, reference: str | Digest) -> ManifestAnswer | None:
        """What another process's exchange left in the store: the manifest, or its remembered 404 (raised)."""
        await self._missing.raise_if_known(target, str(reference))
        if isinstance(reference, Digest):
            return await self._cached(target, reference)
        self._tags.pop((target.store_name, reference), None)  # this process's memo predates that exchange
        return await self._cached_tag(target, reference)

    # ------------------------------------------------------------------ cache reads
    def _repository(self, target: Target) -> Repository:
        return self._store.repository(target.store_name, cached=True)

    async def _media_type(self, target: Target, digest: Digest) -> str | None:
        key = (target.store_name, digest)
        media_type = self._media_types.get(key)
        if media_type is None:
            media_type = await self._repository(target).manifest_media_type(digest)
            if media_type is not None:
                self._media_types[key] = media_type
        return media_type

    async def _cached(self, target: Target, digest: Digest) -> ManifestAnswer | None:
        """The manifest from the store if this repository holds it (and eviction left its bytes)."""
        media_type = await self._media_type(target, digest)
        return None if media_type is None else await self._held(digest, media_type)

    async def _held(self, digest: Digest, media_type: str) -> ManifestAnswer | None:
        """A linked manifest with its bytes, unless eviction took them."""
        body = await self._store.read_small(digest)
        if body is None:
            return None
        return ManifestAnswer(digest, media_type, len(body), body, stats.HIT)

    async def _tag(self, target: Target, tag: str) -> _Tag | None:
        key = (target.store_name, tag)
        state = self._tags.get(key)
        if state is None:
            link = await self._repository(target).get_tag(tag)
            if link is None:
                return None
            media_type = await self._media_type(target, link.digest)
            if media_type is None:
                return None
            state = self._tags.setdefault(key, _Tag(link.digest, media_type, link.confirmed_at))
        return state

    def fresh_for(self, target: Target, tag: str) -> float:
        """Seconds the tag, as remembered, stays a hit (0 if it is not remembered): an answer built from it may
        be reused that long, and no longer (api/hot.py)."""
        assert target.upstream is not None
        state = self._tags.get((target.store_name, tag))
        return 0.0 if state is None else target.upstream.config.manifest_ttl - (self._clock() - state.confirmed_at)

    async def _cached_tag(self, target: Target, tag: str) -> ManifestAnswer | None:
        """The tag's manifest if the cache answers alone: confirmed within the upstream's manifest_ttl (a hit),
        or expired while the upstream failed to revalidate it moments ago or is down to its rate-limit reserve
        (stale, without asking, but for one revalidation a minute: upstream/budget.py)."""
        assert target.upstream is not None
        state = await self._tag(target, tag)
        if state is None:
            return None
        if self._clock() - state.confirmed_at < target.upstream.config.manifest_ttl:
            result = stats.HIT
        elif self._failing.get((target.upstream.name, target.repository, tag)) \
                or not target.upstream.budget.may_revalidate():
            result = stats.STALE
        else:
            return None
        cached = await self._held(state.digest, state.media_type)  # _tag() just read the media type
        return cached if cached is None or result == stats.HIT else replace(cached, result=result)

    # ------------------------------------------------------------------ upstream work (one per reference)
    async def _fetch_digest(self, target: Target, digest: Digest, accept: Sequence[str],
                            head: bool) -> ManifestAnswer:
        assert target.upstream is not None
        async with self._upstream_failures(target, str(digest)):
            if head:
                remote = await target.upstream.head_manifest(target.repository, str(digest), accept)
                return ManifestAnswer(digest, remote.media_type, remote.size, None, stats.MISS)
            response = await target.upstream.get_manifest(target.repository, str(digest), accept)
            return await self._keep(target, response, digest.algorithm)

    async def _refresh_tag(self, target: Target, tag: str, accept: Sequence[str], head: bool) -> ManifestAnswer:
        """Ask the upstream about a tag the cache cannot answer alone (unknown, expired, or its bytes evicted)."""
        assert target.upstream is not None
        upstream = target.upstream
        state = await self._tag(target, tag)
        cached = await self._cached(target, state.digest) if state is not None else None
        try:
            async with self._upstream_failures(target, tag):
                if cached is not None or head:
                    remote = await upstream.head_manifest(target.repository, tag, accept)
                    remote_digest = Digest.parse(remote.digest)
                    held = await self._cached(target, remote_digest)
                    if held is not None:
                        unchanged = cached is not None and cached.digest == held.digest
                        await self._set_tag(target, tag, held)
                        # revalidated: the upstream confirmed the digest we had; a tag that moved is a miss
                        return replace(held, result=stats.REVALIDATED if unchanged else stats.MISS)
                    if head:
                        await self._pending_tags.put(_pending_key(target, remote_digest),
                                                     json.dumps([tag, self._clock()]))
                        return ManifestAnswer(remote_digest, remote.media_type, remote.size, None, stats.MISS)
                response = await upstream.get_manifest(target.repository, tag, accept)
                answer = await self._keep(target, response, "sha256")
                await self._set_tag(target, tag, answer)
                return answer
        except UpstreamNotFound:
            await self._forget_tag(target, tag)
            raise
        except UpstreamUnauthorized:
            raise
        except UpstreamError as exc:
            if cached is None:
                raise
            self._failing[(upstream.name, target.repository, tag)] = True
            log.info("serving %s:%s stale (%s) while the upstream fails: %s", target.store_name, tag, cached.digest,
                     exc.message)
            return replace(cached, result=stats.STALE)

    # ------------------------------------------------------------------ cache writes
    async def _keep(self, target: Target, response: ManifestResponse, algorithm: str) -> ManifestAnswer:
        """Store a fetched manifest byte-for-byte and link it into its cached repository, if it passes the
        checks a push passes (pullcache/manifest_check.py); one that fails is the upstream's failure, not cached."""
        assert target.upstream is not None
        check = partial(check_manifest, response.body, response.media_type)
        try:
            checked = await asyncio.to_thread(check) if len(response.body) > CHECK_INLINE_BYTES else check()
            media_type = checked.media_type
        except ManifestInvalid as exc:
            raise UpstreamError(target.upstream.name, f"served an invalid manifest: {exc.message}") from exc
        digest = await self._store.put_small(response.body, origin=CACHED, algorithm=algorithm)
        await self._repository(target).link_manifest(digest, media_type)
        self._media_types[(target.store_name, digest)] = media_type
        answer = ManifestAnswer(digest, media_type, len(response.body), response.body, stats.MISS)
        pending = await self._pending_tags.pop(_pending_key(target, digest))
        if pending is not None:
            tag, learned_at = json.loads(pending)
            current = await self._tag(target, tag)
            if current is None or current.confirmed_at < learned_at:
                await self._set_tag(target, tag, answer, confirmed_at=learned_at)
        return answer

    async def _set_tag(self, target: Target, tag: str, answer: ManifestAnswer, *,
                       confirmed_at: float | None = None) -> None:
        """Point the tag at answer's manifest, confirmed now (or when the caller learned it): a tag the
        upstream confirmed unchanged is written again with its new time, which restarts its ttl."""
        when = self._clock() if confirmed_at is None else confirmed_at
        await self._repository(target).set_tag(tag, answer.digest, confirmed_at=when)
        self._tags[(target.store_name, tag)] = _Tag(answer.digest, answer.media_type, when)

    async def _forget_tag(self, target: Target, tag: str) -> None:
        """The upstream says the tag is gone: so is our copy of it (the manifest stays until GC)."""
        self._tags.pop((target.store_name, tag), None)
        await self._repository(target).delete_tag(tag)

    # ------------------------------------------------------------------ upstream failures
    @asynccontextmanager
    async def _upstream_failures(self, target: Target, reference: str) -> AsyncIterator[None]:
        """Around one upstream exchange: remember a 404; log any other failure once, not per waiting client."""
        try:
            yield
        except UpstreamNotFound as exc:
            await self._missing.remember(target, reference, exc)
            log.debug("manifest %s:%s not found upstream: %s", target.store_name, reference, exc)
            raise
        except UpstreamError as exc:
            log.warning("manifest %s:%s: %s", target.store_name, reference, exc)
            raise
