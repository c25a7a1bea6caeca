"""An upstream's repository behind the same interface as a pushed one (cache/registry.py), and the one
place that picks which a name gets.

Like Distribution's `registry/proxy`, ProxiedRepository is a layer over the cached copy (a
LocalRepository of the store's cached repositories) and the upstream: blobs and manifests come through
the pull-through cache (blobs.py fills, manifests.py ttl and revalidation, missing.py's remembered 404s),
tags are the ones cached, referrers the upstream's own list. The HTTP handlers and `pullcache warm`
read through it without knowing they do.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pullcache.cache.local import LocalRepository
from pullcache.cache.registry import (
    CACHE,
    UPSTREAM,
    BlobBody,
    ManifestBody,
    RegistryRepository,
    RepositoryUnknown,
)
from pullcache.cache.store import Store
from pullcache.digests import Digest
from pullcache.policy import PullPolicy
from pullcache.pullthrough import PullThrough, stats
from pullcache.pullthrough.manifests import ManifestAnswer
from pullcache.resolver import Target


class ProxiedRepository:
    def __init__(self, store: Store, pullthrough: PullThrough, policy: PullPolicy, target: Target) -> None:
        assert target.upstream is not None, "a proxied repository has an upstream"
        self._pullthrough = pullthrough
        self._policy = policy
        self._target = target
        self._upstream = target.upstream
        self._cached = LocalRepository(store, target.store_name, cached=True)

    async def blob(self, digest: Digest, *, head: bool = False) -> BlobBody | None:
        blobs = self._pullthrough.blobs
        if head:
            # A HEAD is how a push asks whether to upload. For a bare name that only falls back to the
            # default upstream, the answer must be ours: the upstream's copy (or its refusal) of a
            # same-named repository would make the client skip an upload or abort its push.
            found = await blobs.head(self._target, digest, ask_upstream=not self._target.via_default)
            if found is None:
                return None
            size, result = found
            return BlobBody(CACHE if result == stats.HIT else UPSTREAM, result, size=size)
        return await blobs.open(self._target, digest)

    async def holds_blob(self, digest: Digest) -> bool:
        return await self._cached.holds_blob(digest)

    async def manifest(self, reference: str | Digest, accept: Sequence[str] = (), *, head: bool = False,
                       count: bool = True) -> ManifestBody:
        answer = await self._pullthrough.manifests.get(self._target, reference, accept, head=head, count=count)
        return _body(answer)

    def answered(self, manifest: ManifestBody, *, head: bool) -> None:
        """An allowed manifest went out: it, and what it references, may now be pulled by digest (policy.py)."""
        self._policy.vouch(self._upstream.name, self._target.repository, str(manifest.digest),
                           None if head else manifest.body)

    async def tags(self) -> list[str]:
        try:
            return await self._cached.tags()
        except RepositoryUnknown as exc:
            raise RepositoryUnknown(f"{exc} (nothing of it is cached)") from exc

    async def referrers(self, subject: Digest) -> list[dict[str, Any]]:
        """The upstream's list, asked each time. Nothing is cached: signatures and SBOMs are attached to an
        image after it was pushed, and a verifier must see them as soon as the upstream does. Clients ask for
        referrers rarely next to blobs."""
        return await self._upstream.get_referrers(self._target.repository, str(subject))


def _body(answer: ManifestAnswer) -> ManifestBody:
    fresh = answer.result in (stats.MISS, stats.COALESCED)
    return ManifestBody(answer.digest, answer.media_type, answer.size, answer.body, UPSTREAM if fresh else CACHE,
                        answer.result)


def proxied_repository(store: Store, pullthrough: PullThrough, policy: PullPolicy,
                       target: Target) -> ProxiedRepository | None:
    """The pull-through view of the target's upstream repository; None for a local target."""
    if target.upstream is None:
        return None
    return ProxiedRepository(store, pullthrough, policy, target)


def repository_for(store: Store, pullthrough: PullThrough, policy: PullPolicy, target: Target) -> RegistryRepository:
    """The repository a resolved name reads from: its upstream's through the cache, or the pushed one."""
    return proxied_repository(store, pullthrough, policy, target) or LocalRepository(store, target.store_name)
